#!/usr/bin/env python3
"""Offline Kubernetes checks for scripts/validate-k8s.sh.

Runs inside the venv that validate-k8s.sh installs (target/k8s-tools/venv):

- helm-python-sdk ships no `helm` executable: it binds Helm's Go SDK
  (libhelm_c.so, Helm v4) through ctypes. `lint` and `template` below are the
  `helm lint --strict` and `helm template` of that SDK.
- kubernetes-validate bundles the Kubernetes OpenAPI schemas per version, so
  `validate` works with no network and no API server.

Subcommands:
  lint CHART [--set K=V]...              helm lint --strict
  template CHART --out FILE [--set K=V]... helm template (NOTES.txt dropped)
  validate FILE...                       every object, strict, against the
                                         pinned Kubernetes version; kinds with
                                         no bundled schema (CRDs) are listed
                                         as skipped
  crd FILE --crd CRD                     ChatCluster objects in FILE against
                                         the CRD's openAPIV3Schema; the other
                                         kinds as `validate` does
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import yaml

DEFAULT_KUBE_VERSION = "1.33.0"


def load_documents(path: Path) -> list[dict[str, Any]]:
    """Every non-empty YAML document of a file."""
    with path.open(encoding="utf-8") as f:
        docs = [d for d in yaml.safe_load_all(f) if d is not None]
    for i, doc in enumerate(docs):
        if not isinstance(doc, dict):
            raise SystemExit(f"{path}: document {i + 1} is not a mapping")
    return docs


def describe(doc: dict[str, Any]) -> str:
    meta = doc.get("metadata") or {}
    ns = meta.get("namespace")
    name = meta.get("name", "<no name>")
    where = f"{ns}/{name}" if ns else name
    return f"{doc.get('apiVersion', '?')} {doc.get('kind', '?')} {where}"


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def values_from_sets(sets: list[str]) -> dict[str, Any]:
    """`--set` expressions, parsed by Helm's own strvals parser."""
    import helm_python as helm

    values: dict[str, Any] = {}
    for expression in sets:
        values = deep_merge(values, helm.parse_set_string(expression))
    return values


# --------------------------------------------------------------------- helm


def cmd_lint(args: argparse.Namespace) -> int:
    import helm_python as helm

    try:
        values = values_from_sets(args.set)
    except helm.HelmError as e:
        print(f"  bad --set: {e}")
        return 1
    report = helm.lint(
        args.chart,
        values or None,
        strict=True,
        namespace=args.namespace,
        kube_version=f"v{args.kube_version.lstrip('v')}",
    )
    names = {0: "UNKNOWN", 1: "INFO", 2: "WARNING", 3: "ERROR"}
    failed = False
    for message in report.get("messages", []):
        severity = int(message.get("severity", 0))
        # --strict: warnings fail too.
        failed = failed or severity >= 2
        text = str(message.get("error", "")).strip().replace("\n", "\n      ")
        print(f"  [{names.get(severity, severity)}] {message.get('path', '')}: {text}")
    if report.get("errors"):
        failed = True
    print(f"  {report.get('total_charts_linted', 0)} chart(s) linted, {'failed' if failed else 'ok'}")
    return 1 if failed else 0


def cmd_template(args: argparse.Namespace) -> int:
    import helm_python as helm

    try:
        values = values_from_sets(args.set)
        with helm.Chart.load(args.chart) as chart:
            rendered = chart.render(
                values or None,
                name=args.release,
                namespace=args.namespace,
                is_install=True,
            )
    except helm.HelmError as e:
        print(f"  {type(e).__name__}: {str(e).strip()}")
        return 1
    out: list[str] = []
    for source in sorted(rendered):
        if source.endswith("NOTES.txt"):
            continue
        try:
            docs = list(yaml.safe_load_all(rendered[source]))
        except yaml.YAMLError as e:
            print(f"  {source} is not valid YAML: {e}")
            return 1
        for doc in docs:
            if doc is None:
                continue
            out.append(f"# Source: {source}\n" + yaml.safe_dump(doc, sort_keys=False))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("---\n".join(out), encoding="utf-8")
    print(f"  {len(out)} object(s) -> {args.out}")
    return 0


# --------------------------------------------------- kubernetes-validate


def validate_core(doc: dict[str, Any], kube_version: str) -> tuple[str, str | None]:
    """("ok" | "skipped" | "failed", message) for one object."""
    from kubernetes_validate import utils

    try:
        utils.validate(doc, kube_version, strict=True)
        return "ok", None
    except utils.SchemaNotFoundError:
        return "skipped", None
    except utils.ValidationError as e:
        path = ".".join(str(p) for p in e.path) or "<root>"
        return "failed", f"{path}: {e.message}"
    except utils.VersionNotSupportedError as e:
        raise SystemExit(f"kubernetes-validate has no schemas for Kubernetes {e.version}")


def summarize(results: list[tuple[str, dict[str, Any], str, str | None]]) -> int:
    """Print per-object results and a summary; return 1 on any failure."""
    failed = [r for r in results if r[2] == "failed"]
    skipped = [r for r in results if r[2] == "skipped"]
    ok = [r for r in results if r[2] == "ok"]
    for file, doc, status, message in results:
        if status == "failed":
            print(f"  FAIL {file}: {describe(doc)}: {message}")
    skipped_kinds = sorted({f"{d.get('apiVersion')} {d.get('kind')}" for _, d, _, _ in skipped})
    for kind in skipped_kinds:
        count = sum(1 for _, d, _, _ in skipped if f"{d.get('apiVersion')} {d.get('kind')}" == kind)
        print(f"  skipped (no schema bundled): {kind} x{count}")
    print(f"  {len(ok)} valid, {len(failed)} invalid, {len(skipped)} skipped")
    return 1 if failed else 0


def cmd_validate(args: argparse.Namespace) -> int:
    results = []
    for file in args.files:
        docs = load_documents(Path(file))
        if not docs:
            print(f"  FAIL {file}: no objects")
            results.append((file, {}, "failed", "no objects"))
        for doc in docs:
            status, message = validate_core(doc, args.kube_version)
            results.append((file, doc, status, message))
    return summarize(results)


# --------------------------------------------------------- CRD schemas


def openapi_to_jsonschema(node: Any) -> Any:
    """A CRD structural schema as JSON Schema, strict like the API server's
    field validation: unknown fields are errors unless the schema preserves
    them. CEL rules (x-kubernetes-validations) are not evaluated here."""
    if isinstance(node, list):
        return [openapi_to_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-") or key == "nullable":
            continue
        if key in ("properties", "patternProperties", "definitions"):
            out[key] = {k: openapi_to_jsonschema(v) for k, v in value.items()}
        else:
            out[key] = openapi_to_jsonschema(value)
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    preserve = node.get("x-kubernetes-preserve-unknown-fields")
    if "properties" in node and "additionalProperties" not in node and not preserve:
        out["additionalProperties"] = False
    return out


def crd_validators(crd_path: Path) -> dict[tuple[str, str], Any]:
    """(apiVersion, kind) -> a JSON Schema validator, for each served version."""
    import jsonschema

    validators = {}
    for crd in load_documents(crd_path):
        if crd.get("kind") != "CustomResourceDefinition":
            continue
        spec = crd["spec"]
        for version in spec.get("versions", []):
            schema = (version.get("schema") or {}).get("openAPIV3Schema")
            if not version.get("served", True) or not schema:
                continue
            converted = openapi_to_jsonschema(schema)
            # The API server adds apiVersion, kind and metadata (any valid
            # ObjectMeta) to every CRD's root schema.
            root = converted.setdefault("properties", {})
            root["apiVersion"] = {"type": "string"}
            root["kind"] = {"type": "string"}
            root["metadata"] = {"type": "object"}
            key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
            validators[key] = jsonschema.Draft7Validator(converted)
    if not validators:
        raise SystemExit(f"{crd_path}: no CustomResourceDefinition with a schema")
    return validators


def cmd_crd(args: argparse.Namespace) -> int:
    validators = crd_validators(Path(args.crd))
    results = []
    for file in args.files:
        for doc in load_documents(Path(file)):
            validator = validators.get((doc.get("apiVersion"), doc.get("kind")))
            if validator is None:
                status, message = validate_core(doc, args.kube_version)
            else:
                errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
                if errors:
                    status = "failed"
                    message = "; ".join(
                        f"{'.'.join(str(p) for p in e.path) or '<root>'}: {e.message}" for e in errors
                    )
                else:
                    status, message = "ok", None
            results.append((file, doc, status, message))
    return summarize(results)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kube-version", default=DEFAULT_KUBE_VERSION)
    sub = parser.add_subparsers(dest="command", required=True)

    lint = sub.add_parser("lint", help="helm lint --strict")
    lint.add_argument("chart")
    lint.add_argument("--namespace", default="default")
    lint.add_argument("--set", action="append", default=[], metavar="K=V")
    lint.set_defaults(func=cmd_lint)

    template = sub.add_parser("template", help="helm template")
    template.add_argument("chart")
    template.add_argument("--out", required=True)
    template.add_argument("--release", default="parley-operator")
    template.add_argument("--namespace", default="default")
    template.add_argument("--set", action="append", default=[], metavar="K=V")
    template.set_defaults(func=cmd_template)

    validate = sub.add_parser("validate", help="kubernetes-validate --strict, CRD kinds skipped")
    validate.add_argument("files", nargs="+")
    validate.set_defaults(func=cmd_validate)

    crd = sub.add_parser("crd", help="custom resources against a CRD's schema")
    crd.add_argument("--crd", required=True)
    crd.add_argument("files", nargs="+")
    crd.set_defaults(func=cmd_crd)

    args = parser.parse_args()
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
