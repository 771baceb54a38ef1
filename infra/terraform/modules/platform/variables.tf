variable "name" {
  description = "Prefix of every resource name"
  type        = string
}

variable "bucket_name" {
  description = "Globally unique name of the artifact bucket (DVC remote and MLflow artifacts)"
  type        = string
}

variable "database_instance_class" {
  description = "RDS instance class of the MLflow and Prefect database"
  type        = string
  default     = "db.t4g.medium"
}

variable "database_multi_az" {
  description = "A standby database in a second zone"
  type        = bool
  default     = true
}

variable "tags" {
  description = "Tags on every resource"
  type        = map(string)
  default     = {}
}
