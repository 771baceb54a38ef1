output "instance_id" {
  description = "aws ssm start-session --target <this>"
  value       = aws_instance.this.id
}
