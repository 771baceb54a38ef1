variable "name" {
  description = "Prefix of every resource name"
  type        = string
}

variable "tags" {
  description = "Tags on every resource"
  type        = map(string)
  default     = {}
}
