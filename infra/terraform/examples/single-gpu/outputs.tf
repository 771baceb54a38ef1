# What the pipeline's configuration needs, with no secret in them: the database password stays in Secrets
# Manager (database_secret_arn) and is read at run time.

output "dvc_remote_url" {
  description = "dvc remote add -d s3 <this>"
  value       = module.platform.dvc_remote_url
}

output "mlflow_artifacts_destination" {
  description = "MLFLOW_ARTIFACTS_DESTINATION for `python -m flows stack start` or the tracking server"
  value       = module.platform.mlflow_artifacts_destination
}

output "mlflow_backend_store_uri_template" {
  description = "MLFLOW_BACKEND_STORE_URI, with $${DB_PASSWORD} to fill from the secret"
  value       = module.platform.mlflow_backend_store_uri_template
}

output "prefect_database_url_template" {
  description = "PREFECT_API_DATABASE_CONNECTION_URL, with $${DB_PASSWORD} to fill from the secret"
  value       = module.platform.prefect_database_url_template
}

output "database_secret_arn" {
  description = "aws secretsmanager get-secret-value --secret-id <this>"
  value       = module.platform.database_secret_arn
}

output "bucket" {
  description = "The artifact bucket"
  value       = module.platform.bucket
}

output "gpu_instance_id" {
  description = "aws ssm start-session --target <this>"
  value       = module.gpu_box.instance_id
}
