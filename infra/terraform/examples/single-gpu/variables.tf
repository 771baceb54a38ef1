variable "region" {
  description = "AWS region"
  type        = string
  default     = "us-east-1"
}

variable "name" {
  description = "Prefix of every resource name"
  type        = string
  default     = "posttrain"
}

variable "bucket_name" {
  description = "Globally unique name of the artifact bucket (DVC remote and MLflow artifacts); no default"
  type        = string
}

variable "gpu_instance_type" {
  description = "GPU instance type (g6e.xlarge: one L40S, 48 GB)"
  type        = string
  default     = "g6e.xlarge"
}

variable "database_instance_class" {
  description = "RDS instance class of the MLflow and Prefect database"
  type        = string
  default     = "db.t4g.medium"
}
