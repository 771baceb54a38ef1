variable "name" {
  description = "Cluster name and prefix of every resource name"
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets of the control plane and the nodes"
  type        = list(string)
}

variable "kms_key_arn" {
  description = "KMS key for Kubernetes secrets"
  type        = string
}

variable "bucket_arn" {
  description = "The artifact bucket the pipeline's pods may use"
  type        = string
}

variable "database_secret_arn" {
  description = "The database master secret the pipeline's pods may read"
  type        = string
}

variable "kubernetes_version" {
  description = "EKS version"
  type        = string
  default     = "1.31"
}

variable "gpu_instance_type" {
  description = "Instance type of the GPU node group"
  type        = string
  default     = "g6e.xlarge"
}

variable "gpu_capacity_type" {
  description = "ON_DEMAND or SPOT"
  type        = string
  default     = "ON_DEMAND"
}

variable "gpu_disk_gb" {
  description = "Root volume of each GPU node (images, model cache)"
  type        = number
  default     = 200
}

variable "gpu_min_nodes" {
  description = "Smallest GPU node count (0: no cost while idle)"
  type        = number
  default     = 0
}

variable "gpu_max_nodes" {
  description = "Largest GPU node count"
  type        = number
  default     = 4
}

variable "gpu_desired_nodes" {
  description = "GPU nodes at creation"
  type        = number
  default     = 0
}

variable "pipeline_namespace" {
  description = "Kubernetes namespace of the Prefect worker's jobs"
  type        = string
  default     = "posttrain"
}

variable "pipeline_service_account" {
  description = "Service account of the Prefect worker's jobs (annotated with the pipeline role)"
  type        = string
  default     = "posttrain-pipeline"
}

variable "tags" {
  description = "Tags on every resource"
  type        = map(string)
  default     = {}
}
