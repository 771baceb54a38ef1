variable "name" {
  description = "Prefix of every resource name"
  type        = string
}

variable "vpc_id" {
  description = "The VPC of the database"
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets (at least two zones)"
  type        = list(string)
}

variable "allowed_cidr" {
  description = "Addresses allowed to connect (the VPC)"
  type        = string
}

variable "kms_key_arn" {
  description = "KMS key for storage, Performance Insights and the master password secret"
  type        = string
}

variable "instance_class" {
  description = "RDS instance class"
  type        = string
  default     = "db.t4g.medium"
}

variable "storage_gb" {
  description = "Initial storage; autoscaling up to four times this"
  type        = number
  default     = 50
}

variable "multi_az" {
  description = "A standby in a second zone"
  type        = bool
  default     = true
}

variable "tags" {
  description = "Tags on every resource"
  type        = map(string)
  default     = {}
}
