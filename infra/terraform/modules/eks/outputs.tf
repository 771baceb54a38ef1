output "cluster_name" {
  description = "aws eks update-kubeconfig --name <this>"
  value       = aws_eks_cluster.this.name
}

output "cluster_endpoint" {
  description = "The Kubernetes API (private)"
  value       = aws_eks_cluster.this.endpoint
}

output "pipeline_role_arn" {
  description = "Annotate the pipeline's service account with eks.amazonaws.com/role-arn = <this>"
  value       = aws_iam_role.pipeline.arn
}
