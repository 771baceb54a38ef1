variable "name" {
  description = "Prefix of every resource name"
  type        = string
}

variable "vpc_id" {
  description = "The VPC of the instance"
  type        = string
}

variable "subnet_id" {
  description = "A private subnet"
  type        = string
}

variable "bucket_arn" {
  description = "The artifact bucket the instance may use"
  type        = string
}

variable "kms_key_arn" {
  description = "KMS key of the bucket and the root volume"
  type        = string
}

variable "instance_type" {
  description = "GPU instance type"
  type        = string
  default     = "g6e.xlarge"
}

variable "disk_gb" {
  description = "Root volume size"
  type        = number
  default     = 300
}

variable "tags" {
  description = "Tags on every resource"
  type        = map(string)
  default     = {}
}
