# One GPU instance beside the shared services: bucket, database, network. Run the pipeline on it with the
# `gpu` profile, the MLflow server and Prefect server pointed at the database (see outputs and docs/scaling.md).

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
  multi_az       = false
}

module "gpu_box" {
  source        = "../../modules/gpu_instance"
  name          = var.name
  vpc_id        = module.network.vpc_id
  subnet_id     = module.network.private_subnet_ids[0]
  bucket_arn    = module.storage.bucket_arn
  kms_key_arn   = module.kms.key_arn
  instance_type = var.gpu_instance_type
}
