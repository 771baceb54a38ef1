terraform {
  required_version = ">= 1.6"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.80"
    }
    tls = {
      source  = "hashicorp/tls"
      version = "~> 4.0"
    }
  }
  # Keep state remote and locked in production, e.g.:
  # backend "s3" { bucket = "my-tf-state", key = "posttrain/terraform.tfstate", region = "us-east-1", use_lockfile = true, encrypt = true }
}

provider "aws" {
  region = var.region
  default_tags {
    tags = { project = "posttrain", managed_by = "terraform" }
  }
}
