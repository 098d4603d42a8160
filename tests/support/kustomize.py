"""A small kustomize renderer for the subset deploy/kubernetes/ uses, so the tests need no binary.

Supported: ``resources`` (files and directories holding a kustomization), ``components``,
``configMapGenerator`` with ``files`` (and ``generatorOptions.disableNameSuffixHash``, which
must be true: no name hashes to propagate), ``patches`` with ``path`` (strategic merge
patches: maps merge recursively, lists of named maps merge by ``name``, other lists are
replaced) and ``images`` (``newName``/``newTag``). Anything else in a kustomization is an
error rather than silently ignored. Where ``kubectl`` is installed, the tests compare this
renderer's output with ``kubectl kustomize``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

SUPPORTED = {"apiVersion", "kind", "resources", "components", "configMapGenerator", "generatorOptions",
             "patches", "images"}


def render(directory: Path) -> list[dict[str, Any]]:
    objects = _build(directory.resolve())
    return objects


def _load_kustomization(directory: Path) -> dict[str, Any]:
    data = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(data) - SUPPORTED
    if unknown:
        raise ValueError(f"{directory}: kustomization fields this renderer does not support: {sorted(unknown)}")
    return dict(data)


def _build(directory: Path) -> list[dict[str, Any]]:
    k = _load_kustomization(directory)
    objects: list[dict[str, Any]] = []
    for entry in k.get("resources", []):
        path = directory / entry
        if path.is_dir():
            objects.extend(_build(path))
        else:
            objects.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    objects.extend(_config_maps(directory, k))
    for component in k.get("components", []):
        objects = _apply_component(directory / component, objects)
    for patch in k.get("patches", []):
        if set(patch) != {"path"}:
            raise ValueError(f"{directory}: only file patches (path:) are supported, got {patch}")
        _patch(objects, yaml.safe_load((directory / patch["path"]).read_text()))
    for image in k.get("images", []):
        _set_image(objects, image)
    return objects


def _apply_component(directory: Path, objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    k = _load_kustomization(directory)
    if k.get("kind") != "Component":
        raise ValueError(f"{directory} is not a kustomize Component")
    added = [doc for entry in k.get("resources", []) for doc in yaml.safe_load_all((directory / entry).read_text())
             if doc]
    result = [*objects, *added]
    for patch in k.get("patches", []):
        _patch(result, yaml.safe_load((directory / patch["path"]).read_text()))
    return result


def _config_maps(directory: Path, k: dict[str, Any]) -> list[dict[str, Any]]:
    generators = k.get("configMapGenerator", [])
    if generators and not k.get("generatorOptions", {}).get("disableNameSuffixHash"):
        raise ValueError(f"{directory}: name-hashed ConfigMaps are not supported by this renderer")
    maps = []
    for generator in generators:
        if set(generator) - {"name", "files"}:
            raise ValueError(f"{directory}: configMapGenerator supports name and files only")
        data = {Path(f).name: (directory / f).read_text() for f in generator["files"]}
        maps.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"]}, "data": data})
    return maps


def _patch(objects: list[dict[str, Any]], patch: dict[str, Any]) -> None:
    for obj in objects:
        if obj["kind"] == patch["kind"] and obj["metadata"]["name"] == patch["metadata"]["name"]:
            merged = merge(obj, patch)
            obj.clear()
            obj.update(merged)
            return
    raise ValueError(f"patch target not found: {patch['kind']}/{patch['metadata']['name']}")


def merge(base: Any, patch: Any) -> Any:
    """Strategic merge, for the subset above."""
    if isinstance(base, dict) and isinstance(patch, dict):
        if any(str(key).startswith("$") for key in patch):
            raise ValueError(f"patch directives are not supported: {list(patch)}")
        out = copy.deepcopy(base)
        for key, value in patch.items():
            out[key] = merge(base[key], value) if key in base else copy.deepcopy(value)
        return out
    if isinstance(base, list) and isinstance(patch, list) and _named(base) and _named(patch):
        by_name = {item["name"]: item for item in base}
        merged = [merge(by_name[item["name"]], item) if item["name"] in by_name else copy.deepcopy(item)
                  for item in patch]
        patched = {item["name"] for item in patch}
        return [*merged, *(copy.deepcopy(item) for item in base if item["name"] not in patched)]
    return copy.deepcopy(patch)


def _named(items: list[Any]) -> bool:
    return bool(items) and all(isinstance(item, dict) and "name" in item for item in items)


def _set_image(objects: list[dict[str, Any]], image: dict[str, str]) -> None:
    for obj in objects:
        spec = obj.get("spec", {}).get("template", {}).get("spec", {})
        for container in [*spec.get("containers", []), *spec.get("initContainers", [])]:
            name, _, _tag = container["image"].partition(":")
            if name == image["name"]:
                container["image"] = f"{image.get('newName', name)}:{image.get('newTag', _tag or 'latest')}"
