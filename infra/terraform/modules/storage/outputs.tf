output "bucket" {
  description = "The bucket's name"
  value       = aws_s3_bucket.this.bucket
}

output "bucket_arn" {
  description = "The bucket's ARN, for IAM policies"
  value       = aws_s3_bucket.this.arn
}

output "dvc_remote_url" {
  description = "dvc remote add -d s3 <this>"
  value       = "s3://${aws_s3_bucket.this.bucket}/dvc"
}

output "mlflow_artifacts_destination" {
  description = "MLFLOW_ARTIFACTS_DESTINATION of the tracking server"
  value       = "s3://${aws_s3_bucket.this.bucket}/mlflow"
}
