output "endpoint" {
  description = "host:port of the database"
  value       = aws_db_instance.this.endpoint
}

output "master_secret_arn" {
  description = "Secrets Manager secret holding the master user's password (read it at run time; never in tfvars)"
  value       = aws_db_instance.this.master_user_secret[0].secret_arn
}

output "mlflow_backend_store_uri_template" {
  description = "MLFLOW_BACKEND_STORE_URI with the password left as a placeholder to fill from the secret"
  value       = "postgresql://pipeline:$${DB_PASSWORD}@${aws_db_instance.this.endpoint}/mlflow"
}

output "prefect_database_url_template" {
  description = "PREFECT_API_DATABASE_CONNECTION_URL with the password placeholder (database prefect, created once)"
  value       = "postgresql+asyncpg://pipeline:$${DB_PASSWORD}@${aws_db_instance.this.endpoint}/prefect"
}
