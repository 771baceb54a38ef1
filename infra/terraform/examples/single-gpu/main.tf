# One GPU instance beside the shared platform (bucket, database, network). Run the pipeline on it with the
# `gpu` profile, the MLflow server and Prefect server pointed at the database (see outputs and docs/scaling.md).

module "platform" {
  source                  = "../../modules/platform"
  name                    = var.name
  bucket_name             = var.bucket_name
  database_instance_class = var.database_instance_class
  database_multi_az       = false
}

module "gpu_box" {
  source        = "../../modules/gpu_instance"
  name          = var.name
  vpc_id        = module.platform.vpc_id
  subnet_id     = module.platform.private_subnet_ids[0]
  bucket_arn    = module.platform.bucket_arn
  kms_key_arn   = module.platform.kms_key_arn
  instance_type = var.gpu_instance_type
}
