#!/usr/bin/env python3
"""Checks of the deployment files that a schema alone cannot make (scripts/test-deploy.sh).

  check_deploy.py k8s FILE        FILE = `kubectl kustomize deploy/k8s` output
  check_deploy.py compose FILE    FILE = `docker-compose config` output

k8s: the ServiceMonitor and PrometheusRule against tests/deploy/schemas (kubernetes-validate
has no schemas for the Prometheus operator's kinds and only warns about them), the rules equal
to deploy/prometheus/rules.yml, and the wiring: probes, grace period, one volume per pod,
selectors that select, the Service name that becomes job="clicktrail".
Both: every CLICKTRAIL_* variable and every key of a shipped config is a real config key, as
documented in config/clicktrail.toml (the collector refuses unknown keys at start).
Prints one line per problem and exits 1 if there is any. Needs PyYAML and jsonschema (var/venv).
"""
import json
import pathlib
import re
import sys

import jsonschema
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11 (Ubuntu 22.04): scripts/requirements-test.txt
    import tomli as tomllib

ROOT = pathlib.Path(__file__).resolve().parents[2]
problems = []


def problem(text):
    problems.append(text)


# --- config keys --------------------------------------------------------------------------
SHIPPED = tomllib.loads((ROOT / "config/clicktrail.toml").read_text())
SECTIONS = sorted((k for k, v in SHIPPED.items() if isinstance(v, dict)), key=len, reverse=True)


def known_key(path):
    node = SHIPPED
    for part in path:
        if not isinstance(node, dict) or part not in node:
            # Keys shown commented out in the shipped file (e.g. http.snippet_file).
            return re.search(r"^#\s*%s\s*=" % re.escape(path[-1]),
                             (ROOT / "config/clicktrail.toml").read_text(), re.M) is not None
        node = node[part]
    return True


def check_config_text(where, text):
    try:
        cfg = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        problem(f"{where}: not TOML: {e}")
        return
    for key, value in cfg.items():
        if key == "sites":
            for site in value:
                for k in site:
                    if k not in ("key", "origins"):
                        problem(f"{where}: [[sites]] has unknown key {k!r}")
        elif isinstance(value, dict):
            for k in value:
                if not known_key([key, k]):
                    problem(f"{where}: [{key}] {k} is not a clicktrail config key")
        elif not known_key([key]):
            problem(f"{where}: {key} is not a clicktrail config key")


def check_env(where, name):
    if not name.startswith("CLICKTRAIL_") or name == "CLICKTRAIL_CONFIG":
        return
    key = name[len("CLICKTRAIL_"):].lower()
    for section in SECTIONS:
        if key.startswith(section + "_"):
            path = [section, key[len(section) + 1:]]
            break
    else:
        path = [key]
    if not known_key(path):
        problem(f"{where}: {name} names no config key ({'.'.join(path)})")


# --- Kubernetes -----------------------------------------------------------------------------
def check_k8s(docs):
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    for kind in ("StatefulSet", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler",
                 "ConfigMap", "Secret", "ServiceMonitor", "PrometheusRule"):
        if kind not in by_kind:
            problem(f"k8s: no {kind}")
    if problems:
        return

    for kind, schema_file in (("ServiceMonitor", "servicemonitor.json"),
                              ("PrometheusRule", "prometheusrule.json")):
        schema = json.loads((ROOT / "tests/deploy/schemas" / schema_file).read_text())
        for d in by_kind[kind]:
            for e in jsonschema.Draft202012Validator(schema).iter_errors(d):
                problem(f"k8s: {kind}/{d['metadata'].get('name')}: {'.'.join(map(str, e.path))}: {e.message}")

    rules = yaml.safe_load((ROOT / "deploy/prometheus/rules.yml").read_text())["groups"]
    if [r["spec"].get("groups") for r in by_kind["PrometheusRule"]] != [rules]:
        problem("k8s: PrometheusRule differs from deploy/prometheus/rules.yml "
                "(run var/venv/bin/python3 scripts/k8s-rules.py)")

    sts = by_kind["StatefulSet"][0]
    spec, pod = sts["spec"], sts["spec"]["template"]["spec"]
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    c = pod["containers"][0]
    for probe in ("livenessProbe", "readinessProbe"):
        if probe not in c:
            problem(f"k8s: StatefulSet container has no {probe}")
    if c.get("livenessProbe", {}).get("httpGet", {}).get("path") != "/healthz":
        problem("k8s: livenessProbe should be GET /healthz")
    if pod.get("enableServiceLinks") is not False:
        problem("k8s: enableServiceLinks must be false: the Service `clicktrail` would inject "
                "CLICKTRAIL_PORT etc., which the collector refuses as unknown config keys")
    claims = [t["metadata"]["name"] for t in spec.get("volumeClaimTemplates", [])]
    mounts = {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}
    if "spool" not in claims or mounts.get("spool") != "/var/lib/clicktrail":
        problem("k8s: the spool must be a volumeClaimTemplate mounted at the data_dir /var/lib/clicktrail")
    retention = spec.get("persistentVolumeClaimRetentionPolicy", {})
    if retention.get("whenScaled") != "Retain" or retention.get("whenDeleted") != "Retain":
        problem("k8s: spool volumes must be retained when scaled down or deleted")
    for sel_owner, sel in (("StatefulSet", spec["selector"]["matchLabels"]),
                           ("PodDisruptionBudget", by_kind["PodDisruptionBudget"][0]["spec"]["selector"]["matchLabels"])):
        if any(pod_labels.get(k) != v for k, v in sel.items()):
            problem(f"k8s: {sel_owner} selector {sel} does not select the collector pods {pod_labels}")

    # The config the pods read, and what the grace period must cover.
    cm = by_kind["ConfigMap"][0]
    text = cm["data"].get("clicktrail.toml", "")
    check_config_text("k8s ConfigMap clicktrail.toml", text)
    cfg = tomllib.loads(text)
    seconds = lambda v: int(re.fullmatch(r"(\d+)s", v).group(1))
    drain = seconds(cfg.get("sink", {}).get("shutdown_timeout", "10s")) + \
        seconds(cfg.get("http", {}).get("request_timeout", "10s"))
    if pod.get("terminationGracePeriodSeconds", 30) < drain + 5:
        problem(f"k8s: terminationGracePeriodSeconds {pod.get('terminationGracePeriodSeconds')} "
                f"leaves no room for the HTTP drain and sink.shutdown_timeout ({drain} s) plus preStop")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    if volumes.get("config", {}).get("configMap", {}).get("name") != cm["metadata"]["name"]:
        problem("k8s: the pods do not mount the generated ConfigMap")
    secrets = {s["metadata"]["name"] for s in by_kind["Secret"]}
    for d in by_kind["StatefulSet"] + by_kind.get("CronJob", []):
        tmpl = d["spec"]["template"] if d["kind"] == "StatefulSet" else d["spec"]["jobTemplate"]["spec"]["template"]
        for ctr in tmpl["spec"]["containers"]:
            for env in ctr.get("env", []):
                check_env(f"k8s {d['kind']}/{d['metadata']['name']}", env["name"])
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref and ref["name"] not in secrets:
                    problem(f"k8s: {env['name']} refers to missing Secret {ref['name']}")

    # Prometheus: the rules select job="clicktrail", and the operator names the job after the Service.
    services = by_kind["Service"]
    sm = by_kind["ServiceMonitor"][0]
    scraped = [s for s in services
               if all(s["metadata"].get("labels", {}).get(k) == v
                      for k, v in sm["spec"]["selector"].get("matchLabels", {}).items())]
    if [s["metadata"]["name"] for s in scraped] != ["clicktrail"]:
        problem(f"k8s: the ServiceMonitor must select exactly the Service `clicktrail` (job label), "
                f"selects {[s['metadata']['name'] for s in scraped]}")
    else:
        ports = {p.get("name") for p in scraped[0]["spec"]["ports"]}
        if sm["spec"]["endpoints"][0]["port"] not in ports:
            problem("k8s: the ServiceMonitor's port is not a port of the Service")
        if any(pod_labels.get(k) != v for k, v in scraped[0]["spec"]["selector"].items()):
            problem("k8s: the Service `clicktrail` does not select the collector pods")
    if sts["spec"]["serviceName"] not in {s["metadata"]["name"] for s in services}:
        problem("k8s: the StatefulSet's serviceName is not a Service")
    hpa = by_kind["HorizontalPodAutoscaler"][0]["spec"]["scaleTargetRef"]
    if (hpa["kind"], hpa["name"]) != ("StatefulSet", sts["metadata"]["name"]):
        problem("k8s: the HorizontalPodAutoscaler does not scale the StatefulSet")


# --- docker-compose -------------------------------------------------------------------------
def check_compose(doc):
    svc = doc.get("services", {})
    for name in ("clickhouse", "clicktrail", "prometheus", "grafana"):
        if name not in svc:
            problem(f"compose: no service {name}")
    if problems:
        return
    ch, ct = svc["clickhouse"], svc["clicktrail"]
    if ch.get("ports"):
        problem("compose: ClickHouse must have no host port (reachable inside the compose network only)")
    image = ch.get("image", "")
    if not re.fullmatch(r"clickhouse/clickhouse-server:\d+\.\d+(\.\d+)*", image):
        problem(f"compose: pin a ClickHouse release, not {image!r}")
    env = ch.get("environment", {})
    if not env.get("CLICKHOUSE_PASSWORD") or env.get("CLICKHOUSE_USER", "default") == "default":
        problem("compose: ClickHouse needs its own user with a password (not the passwordless default)")
    if "CLICKHOUSE_SKIP_USER_SETUP" in env:
        problem("compose: CLICKHOUSE_SKIP_USER_SETUP keeps the passwordless default user")
    targets = {v.get("target") if isinstance(v, dict) else v.split(":")[1] for v in ch.get("volumes", [])}
    if "/etc/clickhouse-server/config.d/low-memory.xml" not in targets:
        problem("compose: ClickHouse does not get deploy/clickhouse/low-memory.xml")
    test = " ".join(ct.get("healthcheck", {}).get("test", []))
    if "/healthz" not in test:
        problem("compose: the collector's healthcheck should GET /healthz")
    vols = ct.get("volumes", [])
    spool = [v for v in vols if (v.get("target") if isinstance(v, dict) else v.split(":")[1]) == "/var/lib/clicktrail"]
    named = lambda v: v.get("type") == "volume" if isinstance(v, dict) else not v.startswith(("/", "."))
    if not spool or not named(spool[0]):
        problem("compose: the collector's data dir (spool) must be a named volume")
    cenv = ct.get("environment", {})
    for name in cenv:
        check_env("compose clicktrail", name)
    if cenv.get("CLICKTRAIL_CLICKHOUSE_PASSWORD") != env.get("CLICKHOUSE_PASSWORD"):
        problem("compose: the collector's CLICKTRAIL_CLICKHOUSE_PASSWORD differs from ClickHouse's")
    if cenv.get("CLICKTRAIL_CLICKHOUSE_USER") != env.get("CLICKHOUSE_USER"):
        problem("compose: the collector's CLICKTRAIL_CLICKHOUSE_USER differs from ClickHouse's user")
    for name in ("prometheus", "grafana"):
        for p in svc[name].get("ports", []):
            host_ip = p.get("host_ip") if isinstance(p, dict) else (p.split(":")[0] if p.count(":") == 2 else "")
            if host_ip != "127.0.0.1":
                problem(f"compose: {name} is published beyond loopback: {p}")
    pvols = [v.get("source", "") if isinstance(v, dict) else v.split(":")[0] for v in svc["prometheus"].get("volumes", [])]
    if not any(s.endswith("deploy/prometheus/rules.yml") for s in pvols):
        problem("compose: Prometheus does not load deploy/prometheus/rules.yml")
    genv = svc["grafana"].get("environment", {})
    plugins = ",".join(str(genv.get(k, "")) for k in ("GF_PLUGINS_PREINSTALL_SYNC", "GF_PLUGINS_PREINSTALL", "GF_INSTALL_PLUGINS"))
    if "grafana-clickhouse-datasource" not in plugins:
        problem("compose: Grafana does not install grafana-clickhouse-datasource")
    gvols = {(v.get("source", "") if isinstance(v, dict) else v.split(":")[0]).rstrip("/"):
             (v.get("target") if isinstance(v, dict) else v.split(":")[1]) for v in svc["grafana"].get("volumes", [])}
    dash_dir = next((t for s, t in gvols.items() if s.endswith("deploy/grafana")), None)
    if not any(s.endswith("deploy/grafana/provisioning") for s in gvols) or not dash_dir:
        problem("compose: Grafana needs deploy/grafana/provisioning and the dashboards directory")
    else:
        providers = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/clicktrail.yml").read_text())
        if dash_dir not in [p["options"]["path"] for p in providers["providers"]]:
            problem(f"compose: no dashboard provider reads {dash_dir}")


def main():
    what, path = sys.argv[1], sys.argv[2]
    text = sys.stdin.read() if path == "-" else pathlib.Path(path).read_text()
    if what == "k8s":
        check_k8s([d for d in yaml.safe_load_all(text) if d])
        for f in sorted((ROOT / "deploy/k8s").glob("*.toml")):
            check_config_text(str(f.relative_to(ROOT)), f.read_text())
    elif what == "compose":
        check_compose(yaml.safe_load(text))
    else:
        sys.exit(f"usage: {sys.argv[0]} k8s|compose FILE")
    for p in problems:
        print("   ", p, file=sys.stderr)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
