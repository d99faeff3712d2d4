"""The recipes in cluster/ are copied by users to run on AWS, GCP and Kubernetes, and nothing else
runs them before someone's `ray up` or `kubectl apply`. Each is checked here against what its
consumer requires: Ray's own cluster-launcher schema, the fields KubeRay's ray.io/v1 resources need,
a runtime env Ray accepts, and images and pins that name the Ray (and torch) we install, so an
upgrade that forgets them fails here. Every YAML under cluster/ is found by a glob and must be one
of these kinds. No Ray cluster is started."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Iterator, Mapping
from importlib.metadata import version
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import ray.autoscaler
import yaml
from ray.runtime_env import RuntimeEnv

from raytune_ft.config import JobConfig, load_config

CLUSTER_DIR = Path(__file__).parents[2] / "cluster"
YAMLS = sorted(CLUSTER_DIR.rglob("*.y*ml"))
RAY_SCHEMA = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
RUNTIME_ENV = CLUSTER_DIR / "runtime_env.yaml"

_RAY_IMAGE = re.compile(r"rayproject/ray(?:-ml|-llm)?:(?P<tag>[^\s\"']+)")
_RAY_PIN = re.compile(r"\bray(?:\[[^\]]*\])?==(?P<version>[0-9][\w.]*)")
_TORCH_PIN = re.compile(r"\btorch==(?P<version>[0-9][\w.]*)")


class RecipeError(ValueError):
    """A recipe lacks something its consumer (ray up, KubeRay, Ray's runtime env) requires."""


def _ids(paths: list[Path]) -> list[str]:
    return [str(path.relative_to(CLUSTER_DIR)) for path in paths]


def load_documents(path: Path) -> list[dict[str, Any]]:
    """Every YAML document in ``path``; each must be a mapping."""
    docs = [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]
    if not docs:
        raise RecipeError(f"{path.name}: no YAML document")
    for index, doc in enumerate(docs):
        if not isinstance(doc, dict):
            raise RecipeError(f"{path.name}: document {index} is a {type(doc).__name__}, not a mapping")
    return docs


def recipe_kind(path: Path, docs: list[dict[str, Any]]) -> str:
    """``launcher`` (ray up), ``kuberay`` (kubectl apply), ``serve`` (serve deploy) or ``runtime_env``
    (ray job submit)."""
    if path == RUNTIME_ENV:
        return "runtime_env"
    if len(docs) == 1 and "provider" in docs[0] and "available_node_types" in docs[0]:
        return "launcher"
    if any(str(doc.get("apiVersion", "")).startswith("ray.io/") for doc in docs):
        return "kuberay"
    if len(docs) == 1 and "applications" in docs[0]:
        return "serve"
    raise RecipeError(
        f"{path.name}: neither a cluster-launcher config, a KubeRay manifest, a Serve config nor {RUNTIME_ENV.name}"
    )


def _get(mapping: Mapping[str, Any], dotted: str, where: str, kind: type) -> Any:
    """``mapping[a][b]...`` for ``dotted`` = ``a.b...``, which must exist and be a ``kind``."""
    value: Any = mapping
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise RecipeError(f"{where}: missing {dotted}")
        value = value[part]
    # bool is an int to isinstance: `replicas: true` must not pass as a number.
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise RecipeError(f"{where}: {dotted} should be {kind.__name__}, not {value!r}")
    return value


def check_launcher(config: Mapping[str, Any], where: str) -> None:
    """What `ray up` requires (Ray's schema), plus our layout: a GPU and a CPU-only worker type."""
    schema = json.loads(RAY_SCHEMA.read_text(encoding="utf-8"))
    try:
        jsonschema.validate(config, schema)
    except jsonschema.ValidationError as err:
        key = ".".join(str(part) for part in err.absolute_path) or "<top level>"
        raise RecipeError(f"{where}: {key}: {err.message} (ray-schema.json)") from None
    types = _get(config, "available_node_types", where, dict)
    head = _get(config, "head_node_type", where, str)
    if head not in types:
        raise RecipeError(f"{where}: head_node_type {head!r} is not one of available_node_types {sorted(types)}")
    workers = {name: spec for name, spec in types.items() if name != head}
    for name, spec in workers.items():
        if spec.get("min_workers", 0) > spec.get("max_workers", config.get("max_workers", 0)):
            raise RecipeError(f"{where}: available_node_types.{name}: min_workers exceeds max_workers")
    if sum(spec.get("min_workers", 0) for spec in workers.values()) > config.get("max_workers", 0):
        raise RecipeError(f"{where}: max_workers is below the sum of the node types' min_workers")
    if not any(spec["resources"].get("GPU", 0) > 0 for spec in workers.values()):
        raise RecipeError(f"{where}: available_node_types: no worker type with resources GPU > 0 (training)")
    if not any(spec["resources"].get("GPU", 0) == 0 for spec in workers.values()):
        raise RecipeError(f"{where}: available_node_types: no CPU-only worker type (Ray Data tokenization)")


def _check_pod_template(group: Mapping[str, Any], where: str) -> list[dict[str, Any]]:
    containers = _get(group, "template.spec.containers", where, list)
    if not containers:
        raise RecipeError(f"{where}: template.spec.containers is empty")
    for index, container in enumerate(containers):
        for key in ("name", "image"):
            if not isinstance(container, Mapping) or not container.get(key):
                raise RecipeError(f"{where}: template.spec.containers[{index}] has no {key}")
    return containers


def _gpu_limit(containers: list[dict[str, Any]]) -> int:
    return sum(int(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0)) for c in containers)


def check_raycluster_spec(spec: Mapping[str, Any], where: str) -> None:
    """A RayCluster spec (also a RayJob's rayClusterSpec) as KubeRay v1 needs it, with our layout."""
    head = _get(spec, "headGroupSpec", where, dict)
    _get(head, "rayStartParams", f"{where}: headGroupSpec", dict)
    _check_pod_template(head, f"{where}: headGroupSpec")
    groups = _get(spec, "workerGroupSpecs", where, list)
    gpus: list[int] = []
    for index, group in enumerate(groups):
        at = f"{where}: workerGroupSpecs[{index}]"
        _get(group, "groupName", at, str)
        _get(group, "rayStartParams", at, dict)
        gpus.append(_gpu_limit(_check_pod_template(group, at)))
        low, now, high = (_get(group, key, at, int) for key in ("minReplicas", "replicas", "maxReplicas"))
        if not low <= now <= high:
            raise RecipeError(f"{at}: needs minReplicas <= replicas <= maxReplicas, got {low} <= {now} <= {high}")
    names = [group["groupName"] for group in groups]
    if len(set(names)) != len(names):
        raise RecipeError(f"{where}: workerGroupSpecs: groupName repeats in {names}")
    if not any(gpus) or all(gpus):
        raise RecipeError(f"{where}: workerGroupSpecs: want a GPU group (nvidia.com/gpu limit) and a CPU-only group")


def check_kuberay_document(doc: Mapping[str, Any], where: str) -> None:
    """A RayCluster or RayJob document; other kinds (a ConfigMap beside them) are left to Kubernetes."""
    kind = doc.get("kind")
    if kind not in ("RayCluster", "RayJob"):
        return
    where = f"{where} ({kind})"
    if doc.get("apiVersion") != "ray.io/v1":
        raise RecipeError(f"{where}: apiVersion must be ray.io/v1, not {doc.get('apiVersion')!r}")
    _get(doc, "metadata.name", where, str)
    if kind == "RayCluster":
        check_raycluster_spec(_get(doc, "spec", where, dict), where)
        return
    entrypoint = _get(doc, "spec.entrypoint", where, str)
    if not entrypoint.startswith("raytune-ft "):
        raise RecipeError(f"{where}: spec.entrypoint should run raytune-ft, not {entrypoint!r}")
    check_raycluster_spec(_get(doc, "spec.rayClusterSpec", where, dict), f"{where}: spec.rayClusterSpec")
    text = _get(doc, "spec.runtimeEnvYAML", where, str)
    try:
        runtime_env = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise RecipeError(f"{where}: spec.runtimeEnvYAML is not YAML: {err}") from None
    if not isinstance(runtime_env, dict):
        raise RecipeError(f"{where}: spec.runtimeEnvYAML should hold a mapping")
    check_runtime_env(runtime_env, f"{where}: spec.runtimeEnvYAML")


def check_runtime_env(runtime_env: Mapping[str, Any], where: str) -> None:
    """Ray's own RuntimeEnv accepts it (unknown fields, wrong types and bad pip specs raise)."""
    try:
        RuntimeEnv(**runtime_env)
    except (TypeError, ValueError) as err:
        raise RecipeError(f"{where}: ray.runtime_env.RuntimeEnv rejects it: {err}") from None


def _strings(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(node, str):
        yield path, node
    elif isinstance(node, Mapping):
        for key, value in node.items():
            yield from _strings(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _strings(value, f"{path}[{index}]")


def check_versions(docs: list[dict[str, Any]], where: str, ray_version: str, torch_version: str) -> int:
    """rayproject images, rayVersion and pip pins name the installed Ray and torch; returns the images seen."""
    images = 0
    for path, text in _strings(docs):
        for match in _RAY_IMAGE.finditer(text):
            images += 1
            tag = match["tag"]
            if not tag.startswith(f"{ray_version}-") or not re.search(r"-py3\d+", tag):
                raise RecipeError(f"{where}: {path}: image tag {tag!r} should be {ray_version}-py3XX[-cpu|-gpu|-cuXXX]")
        for pattern, want in ((_RAY_PIN, ray_version), (_TORCH_PIN, torch_version)):
            for match in pattern.finditer(text):
                if match["version"] != want:
                    raise RecipeError(f"{where}: {path}: {match[0]!r} should pin {want}")
        if path.endswith("rayVersion") and text != ray_version:
            raise RecipeError(f"{where}: {path}: rayVersion {text!r} should be {ray_version}")
    return images


def _installed(package: str) -> str:
    return version(package).split("+")[0]


def _by_kind(kind: str) -> list[Path]:
    """The recipes of one kind; a file that does not load fails test_every_yaml_parses_..., not collection."""
    found = []
    for path in YAMLS:
        try:
            if recipe_kind(path, load_documents(path)) == kind:
                found.append(path)
        except (RecipeError, yaml.YAMLError):
            continue
    return found


LAUNCHERS = _by_kind("launcher")
MANIFESTS = _by_kind("kuberay")


def test_glob_finds_the_recipes() -> None:
    assert len(YAMLS) >= 5, f"expected the cluster recipes under {CLUSTER_DIR}, found {_ids(YAMLS)}"
    assert RAY_SCHEMA.is_file(), f"Ray's cluster-launcher schema is gone from {RAY_SCHEMA}"
    kinds = {recipe_kind(path, load_documents(path)) for path in YAMLS}
    assert kinds == {"launcher", "kuberay", "runtime_env", "serve"}


@pytest.mark.parametrize("path", YAMLS, ids=_ids(YAMLS))
def test_every_yaml_parses_and_is_a_known_kind(path: Path) -> None:
    recipe_kind(path, load_documents(path))


@pytest.mark.parametrize("path", LAUNCHERS, ids=_ids(LAUNCHERS))
def test_launcher_config_validates(path: Path) -> None:
    (config,) = load_documents(path)
    check_launcher(config, path.name)


@pytest.mark.parametrize("path", LAUNCHERS, ids=_ids(LAUNCHERS))
def test_launcher_config_passes_ray_up_validation(path: Path) -> None:
    # What `ray up` itself runs before touching the cloud: defaults filled in, then validated
    # (private API; if it moves, follow it rather than drop the check).
    from ray.autoscaler._private.util import prepare_config, validate_config

    (config,) = load_documents(path)
    validate_config(prepare_config(config))


@pytest.mark.parametrize("path", MANIFESTS, ids=_ids(MANIFESTS))
def test_kuberay_manifest_has_what_kuberay_requires(path: Path) -> None:
    docs = load_documents(path)
    assert any(doc.get("kind") in ("RayCluster", "RayJob") for doc in docs)
    for index, doc in enumerate(docs):
        check_kuberay_document(doc, f"{path.name}[{index}]")


@pytest.mark.parametrize("path", _by_kind("serve"), ids=_ids(_by_kind("serve")))
def test_serve_config_validates_and_its_job_config_loads(path: Path) -> None:
    from ray.serve.schema import ServeDeploySchema

    from raytune_ft.serve.app import BUILD_APP_ARGS

    (config,) = load_documents(path)
    for app in ServeDeploySchema.model_validate(config).applications:
        assert app.import_path == "raytune_ft.serve:build_app"
        assert set(app.args) <= set(BUILD_APP_ARGS)
        load_config(CLUSTER_DIR.parent / app.args["config"], app.args.get("overrides") or [])


def test_rayjob_training_configs_validate() -> None:
    # The configs a RayJob mounts from a ConfigMap are the ones its entrypoint trains with.
    configs = {
        f"{path.name}: {doc['metadata']['name']}/{key}": text
        for path in MANIFESTS
        for doc in load_documents(path)
        if doc.get("kind") == "ConfigMap"
        for key, text in doc.get("data", {}).items()
        if key.endswith((".yaml", ".yml"))
    }
    assert configs, "no training config in a KubeRay ConfigMap"
    for where, text in configs.items():
        cfg = JobConfig.model_validate(yaml.safe_load(text))
        assert "://" in cfg.train.storage_path, f"{where}: train.storage_path must be shared storage (s3://, gs://)"
        assert cfg.scaling.use_gpu, f"{where}: scaling.use_gpu should be true on the GPU cluster"


@pytest.mark.parametrize("path", LAUNCHERS + MANIFESTS, ids=_ids(LAUNCHERS + MANIFESTS))
def test_images_and_pins_follow_installed_versions(path: Path) -> None:
    images = check_versions(load_documents(path), path.name, ray.__version__, _installed("torch"))
    assert images, f"{path.name}: no rayproject/ray image, so nothing pins the cluster's Ray"


def test_runtime_env_builds() -> None:
    (runtime_env,) = load_documents(RUNTIME_ENV)
    check_runtime_env(runtime_env, RUNTIME_ENV.name)
    assert "working_dir" not in runtime_env, "--working-dir gives the working dir; a second one would conflict"
    for needed in (".venv/", ".git/", "saves/"):
        assert needed in runtime_env.get("excludes", []), f"{RUNTIME_ENV.name}: excludes lacks {needed}"


def _raycluster() -> dict[str, Any]:
    (doc,) = [doc for doc in load_documents(CLUSTER_DIR / "kuberay" / "raycluster.yaml") if doc["kind"] == "RayCluster"]
    return copy.deepcopy(doc)


def _set(doc: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    *parents, last = dotted.split(".")
    node: Any = doc
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return doc


_DELETE = object()
BROKEN_MANIFESTS: dict[str, tuple[Callable[[dict[str, Any]], dict[str, Any]], str]] = {
    "alpha_api": (lambda d: _set(d, "apiVersion", "ray.io/v1alpha1"), "apiVersion must be ray.io/v1"),
    "no_name": (lambda d: _set(d, "metadata.name", _DELETE), "missing metadata.name"),
    "no_head_params": (lambda d: _set(d, "spec.headGroupSpec.rayStartParams", _DELETE), "rayStartParams"),
    "no_containers": (lambda d: _set(d, "spec.headGroupSpec.template.spec.containers", []), "containers is empty"),
    "no_image": (lambda d: _set(d, "spec.workerGroupSpecs.0.template.spec.containers.0.image", ""), "has no image"),
    "min_above": (lambda d: _set(d, "spec.workerGroupSpecs.0.minReplicas", 99), "minReplicas <= replicas"),
    "no_group_name": (lambda d: _set(d, "spec.workerGroupSpecs.1.groupName", _DELETE), "groupName"),
    "no_gpu_group": (
        lambda d: _set(d, "spec.workerGroupSpecs", [d["spec"]["workerGroupSpecs"][1]]),
        "want a GPU group",
    ),
}


@pytest.mark.parametrize("breakage", BROKEN_MANIFESTS, ids=list(BROKEN_MANIFESTS))
def test_checker_rejects_a_broken_raycluster(breakage: str) -> None:
    check_kuberay_document(_raycluster(), "raycluster.yaml")  # the intact one passes
    mutate, message = BROKEN_MANIFESTS[breakage]
    with pytest.raises(RecipeError, match=re.escape(message)):
        check_kuberay_document(mutate(_raycluster()), "raycluster.yaml")


def test_checker_rejects_a_broken_rayjob_and_launcher_config() -> None:
    (job,) = [doc for doc in load_documents(CLUSTER_DIR / "kuberay" / "rayjob.yaml") if doc["kind"] == "RayJob"]
    with pytest.raises(RecipeError, match=re.escape("spec.entrypoint should run raytune-ft")):
        check_kuberay_document(_set(copy.deepcopy(job), "spec.entrypoint", "python train.py"), "rayjob.yaml")
    with pytest.raises(RecipeError, match="runtimeEnvYAML"):
        check_kuberay_document(_set(copy.deepcopy(job), "spec.runtimeEnvYAML", "env_vars: {A: 1}"), "rayjob.yaml")
    (aws,) = load_documents(CLUSTER_DIR / "aws.yaml")
    with pytest.raises(RecipeError, match="head_node_type"):
        check_launcher(_set(copy.deepcopy(aws), "head_node_type", "nope"), "aws.yaml")
    with pytest.raises(RecipeError, match=re.escape("ray-schema.json")):
        check_launcher(_set(copy.deepcopy(aws), "max_worker", 3), "aws.yaml")
    no_gpu = copy.deepcopy(aws)
    for spec in no_gpu["available_node_types"].values():
        spec["resources"].pop("GPU", None)
    with pytest.raises(RecipeError, match="no worker type with resources GPU"):
        check_launcher(no_gpu, "aws.yaml")


def test_version_check_catches_a_stale_image_and_pin() -> None:
    torch_version = _installed("torch")
    docs = load_documents(CLUSTER_DIR / "kuberay" / "raycluster.yaml")
    assert check_versions(docs, "raycluster.yaml", ray.__version__, torch_version) >= 3
    with pytest.raises(RecipeError, match=re.escape("should be 9.9.9")):
        check_versions(docs, "raycluster.yaml", "9.9.9", torch_version)
    for image in ("rayproject/ray:2.9.0-py311-gpu", f"rayproject/ray:{ray.__version__}"):
        with pytest.raises(RecipeError, match="image tag"):
            check_versions([{"image": image}], "raycluster.yaml", ray.__version__, torch_version)
    stale = [{"setup_commands": [f'pip install "torch==2.0.0" "ray[train]=={ray.__version__}"']}]
    with pytest.raises(RecipeError, match="should pin"):
        check_versions(stale, "aws.yaml", ray.__version__, torch_version)
