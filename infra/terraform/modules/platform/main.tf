# What every deployment shares, whatever runs the GPUs: the key, the network, the artifact bucket and the
# database of MLflow and Prefect. The examples add a GPU box (single-gpu) or an EKS cluster (cluster).

module "kms" {
  source = "../kms"
  name   = var.name
  tags   = var.tags
}

module "network" {
  source      = "../network"
  name        = var.name
  kms_key_arn = module.kms.key_arn
  tags        = var.tags
}

module "storage" {
  source      = "../storage"
  bucket_name = var.bucket_name
  kms_key_arn = module.kms.key_arn
  tags        = var.tags
}

module "database" {
  source         = "../database"
  name           = var.name
  vpc_id         = module.network.vpc_id
  subnet_ids     = module.network.private_subnet_ids
  allowed_cidr   = module.network.cidr_block
  kms_key_arn    = module.kms.key_arn
  instance_class = var.database_instance_class
  multi_az       = var.database_multi_az
  tags           = var.tags
}
