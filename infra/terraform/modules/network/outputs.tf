output "vpc_id" {
  description = "The VPC"
  value       = aws_vpc.this.id
}

output "private_subnet_ids" {
  description = "Subnets of the GPU nodes and the database (no public addresses)"
  value       = aws_subnet.private[*].id
}

output "cidr_block" {
  description = "The VPC's address range, for security group rules"
  value       = aws_vpc.this.cidr_block
}
