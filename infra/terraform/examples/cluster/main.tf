# EKS with a GPU node group (0 to gpu_max_nodes) for the Prefect Kubernetes work pool, the shared bucket
# and database. The pipeline's pods run as the IRSA role of module.eks (bucket, key and database secret only).

module "kms" {
  source = "../../modules/kms"
  name   = var.name
}

module "network" {
  source      = "../../modules/network"
  name        = var.name
  kms_key_arn = module.kms.key_arn
}

module "storage" {
  source      = "../../modules/storage"
  bucket_name = var.bucket_name
  kms_key_arn = module.kms.key_arn
}

module "database" {
  source         = "../../modules/database"
  name           = var.name
  vpc_id         = module.network.vpc_id
  subnet_ids     = module.network.private_subnet_ids
  allowed_cidr   = module.network.cidr_block
  kms_key_arn    = module.kms.key_arn
  instance_class = var.database_instance_class
}

module "eks" {
  source              = "../../modules/eks"
  name                = var.name
  subnet_ids          = module.network.private_subnet_ids
  kms_key_arn         = module.kms.key_arn
  bucket_arn          = module.storage.bucket_arn
  database_secret_arn = module.database.master_secret_arn
  gpu_instance_type   = var.gpu_instance_type
  gpu_max_nodes       = var.gpu_max_nodes
}
