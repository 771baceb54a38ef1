output "kms_key_arn" {
  description = "The key of the bucket, the database, the logs"
  value       = module.kms.key_arn
}

output "vpc_id" {
  description = "The VPC"
  value       = module.network.vpc_id
}

output "private_subnet_ids" {
  description = "Private subnets"
  value       = module.network.private_subnet_ids
}

output "bucket" {
  description = "The artifact bucket"
  value       = module.storage.bucket
}

output "bucket_arn" {
  description = "The artifact bucket's ARN"
  value       = module.storage.bucket_arn
}

output "dvc_remote_url" {
  description = "dvc remote add -d s3 <this>"
  value       = module.storage.dvc_remote_url
}

output "mlflow_artifacts_destination" {
  description = "MLFLOW_ARTIFACTS_DESTINATION of the tracking server"
  value       = module.storage.mlflow_artifacts_destination
}

output "mlflow_backend_store_uri_template" {
  description = "MLFLOW_BACKEND_STORE_URI, with $${DB_PASSWORD} to fill from the secret"
  value       = module.database.mlflow_backend_store_uri_template
}

output "prefect_database_url_template" {
  description = "PREFECT_API_DATABASE_CONNECTION_URL, with $${DB_PASSWORD} to fill from the secret"
  value       = module.database.prefect_database_url_template
}

output "database_secret_arn" {
  description = "Secrets Manager secret of the database password"
  value       = module.database.master_secret_arn
}
