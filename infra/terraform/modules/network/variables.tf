variable "name" {
  description = "Prefix of every resource name"
  type        = string
}

variable "cidr_block" {
  description = "The VPC's address range"
  type        = string
  default     = "10.40.0.0/16"
}

variable "zone_count" {
  description = "Availability zones to spread the subnets over (EKS needs at least 2)"
  type        = number
  default     = 2
}

variable "kms_key_arn" {
  description = "KMS key that encrypts the flow logs"
  type        = string
}

variable "tags" {
  description = "Tags on every resource"
  type        = map(string)
  default     = {}
}
