"""Static checks of the infrastructure code (no terraform binary, no cloud): parse, checkov, variables and outputs."""

import json
import re
import subprocess
from pathlib import Path

import hcl2
import pytest
import yaml

from tests.conftest import REPO

TERRAFORM = REPO / "infra" / "terraform"
SECRET_NAME = re.compile(r"password|secret|token|private_key|access_key", re.IGNORECASE)


def parsed(folder: Path) -> dict[str, list]:
    """Every block of every .tf file of `folder`, by block type, with block labels unquoted."""
    blocks: dict[str, list] = {}
    for path in sorted(folder.glob("*.tf")):
        with open(path) as f:
            for kind, items in hcl2.load(f).items():
                blocks.setdefault(kind, []).extend(
                    {name.strip('"'): body for name, body in item.items()} if isinstance(item, dict) else item
                    for item in items
                )
    return blocks


def names(blocks: list[dict]) -> set[str]:
    return {name for block in blocks for name in block}


def test_every_terraform_file_parses():
    files = sorted(TERRAFORM.rglob("*.tf"))
    assert len(files) >= 20
    for path in files:
        with open(path) as f:
            assert hcl2.load(f), path


@pytest.mark.parametrize("folder", sorted(p.parent for p in TERRAFORM.rglob("variables.tf")), ids=lambda p: p.name)
def test_variables_are_described_typed_and_secrets_have_no_default(folder: Path):
    for variable in parsed(folder).get("variable", []):
        for name, body in variable.items():
            assert body.get("description") and body.get("type"), f"{folder.name}: variable {name}"
            if SECRET_NAME.search(name):
                assert "default" not in body, f"{folder.name}: secret variable {name} has a default"


def test_examples_output_what_the_pipeline_needs_and_no_secret():
    needed = {
        "dvc_remote_url",
        "mlflow_artifacts_destination",
        "mlflow_backend_store_uri_template",
        "prefect_database_url_template",
        "database_secret_arn",
        "bucket",
    }
    for example, extra in (("single-gpu", {"gpu_instance_id"}), ("cluster", {"cluster_name", "pipeline_role_arn"})):
        blocks = parsed(TERRAFORM / "examples" / example)
        assert names(blocks["output"]) >= needed | extra, example
        required = {n for v in blocks["variable"] for n, body in v.items() if "default" not in body}
        assert required == {"bucket_name"}, example  # the one thing without a sensible default
        for output in blocks["output"]:
            for name, body in output.items():
                assert "password" not in str(body["value"]).replace("${DB_PASSWORD}", ""), name
                assert not body.get("sensitive"), f"{name}: outputs hold addresses and ARNs, never secrets"


def test_gpu_node_group_scales_to_zero_and_bucket_is_locked_down():
    eks = parsed(TERRAFORM / "modules" / "eks")
    defaults = {n: body.get("default") for v in eks["variable"] for n, body in v.items()}
    assert defaults["gpu_min_nodes"] == 0 and defaults["gpu_desired_nodes"] == 0
    storage = (TERRAFORM / "modules" / "storage" / "main.tf").read_text()
    for setting in ("block_public_acls       = true", 'status = "Enabled"', 'sse_algorithm     = "aws:kms"'):
        assert setting in storage


def test_checkov_passes_with_every_skip_justified():
    checkov = REPO / ".venv-checkov" / "bin" / "checkov"
    assert checkov.is_file(), "checkov is installed by `make setup` into .venv-checkov"
    out = subprocess.run(
        [str(checkov), "-d", str(TERRAFORM), "--framework", "terraform", "--skip-download", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = json.loads(out.stdout)
    reports = report if isinstance(report, list) else [report]
    failed = [c for r in reports for c in r["results"]["failed_checks"]]
    assert not failed, [(c["check_id"], c["resource"]) for c in failed]
    for r in reports:
        for check in r["results"]["skipped_checks"]:
            assert len(check["check_result"].get("suppress_comment", "")) > 20, check["check_id"]


def test_kubernetes_pool_template_requests_gpus_and_the_gpu_deployment_uses_it():
    template = json.loads((REPO / "infra" / "kubernetes" / "base-job-template.json").read_text())
    container = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpus }}"
    used = set(re.findall(r"{{ (\w+) }}", json.dumps(template["job_configuration"])))
    assert used <= set(template["variables"]["properties"]), used - set(template["variables"]["properties"])
    deployments = {d["name"]: d for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]}
    gpu = deployments["post-train-gpu"]
    assert gpu["work_pool"]["name"] == "gpu-kubernetes" and gpu["parameters"]["profile"] == "gpu"
    assert set(gpu["work_pool"]["job_variables"]) <= set(template["variables"]["properties"])
    assert deployments["nightly"]["schedules"][0]["cron"] == "0 2 * * *"
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "WORKDIR /opt/posttrain" in dockerfile and "whl/cu" in dockerfile  # the CUDA build of torch
    assert gpu["pull"][0]["prefect.deployments.steps.set_working_directory"]["directory"] == "/opt/posttrain"
