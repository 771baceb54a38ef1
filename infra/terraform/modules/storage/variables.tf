variable "bucket_name" {
  description = "Globally unique name of the artifact bucket"
  type        = string
}

variable "kms_key_arn" {
  description = "KMS key that encrypts the objects"
  type        = string
}

variable "noncurrent_version_days" {
  description = "Days an overwritten or deleted object version is kept"
  type        = number
  default     = 90
}

variable "tags" {
  description = "Tags on every resource"
  type        = map(string)
  default     = {}
}
