"""A workload from a TOML file, as the Batch service receives it: container configuration on the pool, and
container settings and constraints on each task."""

from __future__ import annotations

from pathlib import Path

from batchpilot.backends.azure import AzureBackend
from batchpilot.spec import PoolSpec, ResourceFile, TaskSpec
from batchpilot.workload_file import Defaults, load_workload

from .conftest import Http

WORKLOAD = """
[workload]
inputs = "*.csv"
command = "python /app/score.py {input} {output_dir}/{stem}.json"
outputs = ["{stem}.json"]
output_dir = "results"

[workload.container]
image = "myregistry.azurecr.io/scorer:1.2"
run_options = "--network none"

[workload.pool]
vm_size = "STANDARD_D2s_v3"
image = { publisher = "microsoft-dsvm", offer = "ubuntu-hpc", sku = "2204", version = "latest" }
node_agent_sku_id = "batch.node.ubuntu 22.04"
spot_nodes = 2

[workload.constraints]
max_wall_clock = "15m"
max_retries = 3
retention = "1d"
"""


def workload(tmp_path: Path):
    (tmp_path / "a.csv").write_text("1,2\n")
    (tmp_path / "scorer.toml").write_text(WORKLOAD)
    return load_workload(tmp_path / "scorer.toml", Defaults("scorer", PoolSpec("scorer-pool")))


async def test_pool_gets_a_container_configuration(http: Http, backend: AzureBackend, tmp_path: Path):
    http.batch("POST", "/pools", status=201)

    await backend.compute.ensure_pool(workload(tmp_path).pool)

    [sent] = http.sent()
    body = sent.json()
    assert body["virtualMachineConfiguration"] == {
        "imageReference": {
            "publisher": "microsoft-dsvm",
            "offer": "ubuntu-hpc",
            "sku": "2204",
            "version": "latest",
        },
        "nodeAgentSKUId": "batch.node.ubuntu 22.04",
        "containerConfiguration": {
            "type": "dockerCompatible",
            "containerImageNames": ["myregistry.azurecr.io/scorer:1.2"],
        },
    }
    assert (body["vmSize"], body["targetDedicatedNodes"], body["targetLowPriorityNodes"]) == (
        "STANDARD_D2s_v3",
        0,
        2,
    )


async def test_tasks_carry_container_settings_and_constraints(
    http: Http, backend: AzureBackend, tmp_path: Path
):
    template = workload(tmp_path).template
    values = {"input": "a.csv", "input_name": "a.csv", "stem": "a", "task_id": "a-1"}
    spec = TaskSpec(
        task_id="a-1",
        command_line=template.render_command(values),
        resource_files=(ResourceFile("https://store.blob.core.windows.net/in/a.csv?sig=x", "a.csv"),),
        constraints=template.constraints,
        container=template.container,
    )
    http.batch(
        "POST", "/jobs/job-1/addtaskcollection", payload={"value": [{"status": "success", "taskId": "a-1"}]}
    )

    await backend.compute.add_tasks("job-1", [spec])

    [task] = http.sent()[0].json()["value"]
    assert task["containerSettings"] == {
        "imageName": "myregistry.azurecr.io/scorer:1.2",
        "containerRunOptions": "--network none",
    }
    assert task["constraints"] == {
        "maxWallClockTime": "PT15M00S",
        "maxTaskRetryCount": 3,
        "retentionTime": "P1D",
    }
    # The output folder is created first; Batch runs the command line without a shell.
    assert task["commandLine"] == (
        '/bin/sh -c \'mkdir -p "$0" && exec "$@"\' results python /app/score.py a.csv results/a.json'
    )
