# EKS with a GPU node group (0 to gpu_max_nodes) for the Prefect Kubernetes work pool, beside the shared
# platform. The pipeline's pods run as the IRSA role of module.eks (bucket, key and database secret only).

module "platform" {
  source                  = "../../modules/platform"
  name                    = var.name
  bucket_name             = var.bucket_name
  database_instance_class = var.database_instance_class
}

module "eks" {
  source              = "../../modules/eks"
  name                = var.name
  subnet_ids          = module.platform.private_subnet_ids
  kms_key_arn         = module.platform.kms_key_arn
  bucket_arn          = module.platform.bucket_arn
  database_secret_arn = module.platform.database_secret_arn
  gpu_instance_type   = var.gpu_instance_type
  gpu_max_nodes       = var.gpu_max_nodes
}
