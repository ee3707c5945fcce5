"""Structural checks on the rendered manifests, run by deploy/check-manifests.sh.

kubernetes-validate knows the core resources only; this checks what it cannot:
the custom resources (KEDA, Prometheus Operator, RabbitMQ operators) have the
fields their operators need and their references resolve, and the project's
deployment conventions hold in every rendered overlay (security context,
probes, resources, zone spread, one autoscaler and one PodDisruptionBudget per
Deployment, secrets by reference only, grace period vs. drain, NetworkPolicies,
least privilege on the broker, prod pinning). It also checks that every alert
has a promtool test and a runbook section in DEPLOY.md.

    python3 deploy/checks/manifests.py WORK DEPLOY

WORK is check-manifests.sh's scratch directory: the rendered overlays are read
from WORK/rendered/*.yaml, and each PrometheusRule's spec is written to
WORK/rules/<overlay>.rules.yaml for the promtool step that follows. DEPLOY is
the deploy/ directory. Prints one line per problem; exits 1 if there is any.
"""

import os
import re
import sys

import yaml

# BEGIN providers: generated from ingest's registry (ingest/src/providers/registry.rs), whose
# unit test prints this block when it differs. A provider is served when its mode or a credential
# is set; prod must serve each only with credentials, enforced.
# name: (mode variable, credential variables, whether the credentials are secrets)
PROVIDERS = {
    "vonage": ("VONAGE_SIGNATURE_MODE", ("VONAGE_SIGNATURE_SECRET",), True),
    "twilio": ("TWILIO_SIGNATURE_MODE", ("TWILIO_AUTH_TOKEN",), True),
    "telnyx": ("TELNYX_SIGNATURE_MODE", ("TELNYX_PUBLIC_KEY",), False),
    "plivo": ("PLIVO_SIGNATURE_MODE", ("PLIVO_AUTH_TOKEN",), True),
    "sinch": ("SINCH_SIGNATURE_MODE", ("SINCH_WEBHOOK_SECRET", "SINCH_BASIC_AUTH"), True),
    "infobip": ("INFOBIP_AUTH_MODE", ("INFOBIP_BASIC_AUTH",), True),
}
# END providers
# Seals ingest's quarantine copies (ingest/src/intake/replay.rs); prod requires it.
REPLAY_KEY_ENV = "INGEST_QUARANTINE_REPLAY_KEY"
SECRET_ENV = {"AMQP_URL", "WORKER_HTTP_SECRET", "DATABASE_URL", REPLAY_KEY_ENV} | {
    var for _, creds, secret in PROVIDERS.values() if secret for var in creds
}
CORE_GROUPS = {"v1", "apps/v1", "policy/v1", "autoscaling/v2", "networking.k8s.io/v1", "storage.k8s.io/v1"}
# Measured broker CPU per receipt (publish + consume), DEPLOY.md "Resources": the request must
# cover the design peak with headroom.
BROKER_US_PER_RECEIPT, DESIGN_PEAK_PER_S, HEADROOM = 60, 5000, 1.5


def get(obj, path, default=None):
    """The value at a dotted path ("spec.template.spec", list indexes as digits), or default."""
    for key in path.split("."):
        if isinstance(obj, list):
            obj = obj[int(key)] if key.isdigit() and int(key) < len(obj) else None
        elif isinstance(obj, dict):
            obj = obj.get(key)
        else:
            obj = None
        if obj is None:
            return default
    return obj


def selects(selector, labels):
    """Whether a non-empty matchLabels selector selects these labels."""
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check(name, docs, work, errors):
    """Check one rendered overlay's documents, appending "<name>: <problem>" to errors."""

    def err(msg):
        errors.append(f"{name}: {msg}")

    by_kind = {}
    for d in docs:
        for field in ("apiVersion", "kind", "metadata.name"):
            if not get(d, field):
                err(f"a document has no {field}")
        by_kind.setdefault(d.get("kind"), {})[get(d, "metadata.name")] = d
        if d.get("kind") not in ("Namespace", "ConfigMap", "StorageClass") and "spec" not in d:
            err(f"{d.get('kind')}/{get(d, 'metadata.name')} has no spec")
    deployments = by_kind.get("Deployment", {})
    configmaps = by_kind.get("ConfigMap", {})
    kinds = set(by_kind)

    if "Secret" in kinds:
        err("renders a Secret: secrets are created outside the repo and referenced by name")

    # Custom resources: the fields each operator needs, and that references resolve.
    for n, so in by_kind.get("ScaledObject", {}).items():
        target = get(so, "spec.scaleTargetRef.name")
        if target not in deployments:
            err(f"ScaledObject/{n}: scaleTargetRef.name {target!r} is not a rendered Deployment")
        lo, hi = get(so, "spec.minReplicaCount", 0), get(so, "spec.maxReplicaCount", 100)
        if not 1 <= lo <= hi:
            err(f"ScaledObject/{n}: needs 1 <= minReplicaCount ({lo}) <= maxReplicaCount ({hi})")
        triggers = get(so, "spec.triggers") or []
        if not triggers:
            err(f"ScaledObject/{n}: no triggers")
        for t in triggers:
            md = t.get("metadata") or {}
            if t.get("type") != "rabbitmq":
                err(f"ScaledObject/{n}: trigger type {t.get('type')!r}, expected rabbitmq")
            for key in ("queueName", "mode", "value", "protocol"):
                if not md.get(key):
                    err(f"ScaledObject/{n}: rabbitmq trigger without metadata.{key}")
            if md.get("protocol") != "http":
                err(f"ScaledObject/{n}: protocol amqp counts ready messages only; use http")
            ns = get(so, "metadata.namespace")
            if ns and md.get("host") and f".{ns}.svc" not in md["host"]:
                err(f"ScaledObject/{n}: host {md['host']} does not point into namespace {ns}")
            auth = get(t, "authenticationRef.name")
            if auth and auth not in by_kind.get("TriggerAuthentication", {}):
                err(f"ScaledObject/{n}: authenticationRef {auth!r} is not rendered")
    for n, ta in by_kind.get("TriggerAuthentication", {}).items():
        refs = get(ta, "spec.secretTargetRef") or []
        if not refs or not all(r.get("parameter") and r.get("name") and r.get("key") for r in refs):
            err(f"TriggerAuthentication/{n}: secretTargetRef entries need parameter, name, key")

    services = by_kind.get("Service", {})
    for n, sm in by_kind.get("ServiceMonitor", {}).items():
        sel = get(sm, "spec.selector.matchLabels") or {}
        eps = get(sm, "spec.endpoints") or []
        if not sel or not eps or not all(e.get("port") for e in eps):
            err(f"ServiceMonitor/{n}: needs selector.matchLabels and endpoints with a named port")
        matched = [s for s in services.values() if selects(sel, get(s, "metadata.labels") or {})]
        for svc in matched:  # operator-created Services (RabbitMQ) are not rendered
            names = {p.get("name") for p in get(svc, "spec.ports") or []}
            for e in eps:
                if e.get("port") not in names:
                    err(f"ServiceMonitor/{n}: Service/{get(svc, 'metadata.name')} has no port {e.get('port')!r}")
    for n, pm in by_kind.get("PodMonitor", {}).items():
        sel = get(pm, "spec.selector.matchLabels") or {}
        eps = get(pm, "spec.podMetricsEndpoints") or []
        if not sel or not eps:
            err(f"PodMonitor/{n}: needs selector.matchLabels and podMetricsEndpoints")
        matched = [d for d in deployments.values() if selects(sel, get(d, "spec.template.metadata.labels") or {})]
        if not matched:
            err(f"PodMonitor/{n}: selects no rendered Deployment")
        for d in matched:
            names = {p.get("name") for c in get(d, "spec.template.spec.containers") for p in c.get("ports", [])}
            for e in eps:
                if e.get("port") not in names:
                    err(f"PodMonitor/{n}: Deployment/{get(d, 'metadata.name')} has no port {e.get('port')!r}")
    for n, pr in by_kind.get("PrometheusRule", {}).items():
        groups = get(pr, "spec.groups") or []
        if not groups:
            err(f"PrometheusRule/{n}: no groups")
        for g in groups:
            if not g.get("name") or not g.get("rules"):
                err(f"PrometheusRule/{n}: a group needs a name and rules")
            for r in g.get("rules") or []:
                if not (r.get("alert") or r.get("record")) or not r.get("expr"):
                    err(f"PrometheusRule/{n}: rule {r} needs alert/record and expr")
                if r.get("alert") and not get(r, "labels.severity"):
                    err(f"PrometheusRule/{n}: alert {r['alert']} has no severity label")
        with open(os.path.join(work, "rules", f"{name}.rules.yaml"), "w") as f:
            yaml.safe_dump(pr["spec"], f, sort_keys=False)
    clusters = by_kind.get("RabbitmqCluster", {})
    for n, rc in clusters.items():
        if not isinstance(get(rc, "spec.replicas"), int):
            err(f"RabbitmqCluster/{n}: spec.replicas must be set")
        image = get(rc, "spec.image") or ""
        if not re.fullmatch(r"[^:@]+(:\d+\.\d+\.\d+[^:@]*)?(@sha256:[0-9a-f]{64})?", image) or image.count(":") == 0:
            err(f"RabbitmqCluster/{n}: spec.image {image!r} must be pinned to a full version (or digest)")
        pod = get(rc, "spec.override.statefulSet.spec.template.spec") or {}
        zone = [
            t
            for t in pod.get("topologySpreadConstraints") or []
            if t.get("topologyKey") == "topology.kubernetes.io/zone"
        ]
        if not zone or any(t.get("whenUnsatisfiable") != "DoNotSchedule" or t.get("maxSkew") != 1 for t in zone):
            err(f"RabbitmqCluster/{n}: needs a zone spread, maxSkew 1, DoNotSchedule, in override.statefulSet")
        if not any(
            t.get("topologyKey") == "kubernetes.io/hostname"
            for t in get(rc, "spec.affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution") or []
        ):
            err(f"RabbitmqCluster/{n}: needs required hostname anti-affinity")
        cpu = str(get(rc, "spec.resources.requests.cpu") or "0")
        cores = float(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)
        needed = BROKER_US_PER_RECEIPT * 1e-6 * DESIGN_PEAK_PER_S * 2 * HEADROOM
        if get(rc, "spec.replicas") == 3 and cores < needed:
            err(f"RabbitmqCluster/{n}: CPU request {cpu} < {needed:.2f} cores sized from the measured cost")
    for n, pol in by_kind.get("Policy", {}).items():
        for field in ("spec.name", "spec.pattern", "spec.definition", "spec.rabbitmqClusterReference.name"):
            if not get(pol, field):
                err(f"Policy/{n}: missing {field}")
        if get(pol, "spec.rabbitmqClusterReference.name") not in clusters:
            err(f"Policy/{n}: rabbitmqClusterReference does not name a rendered RabbitmqCluster")
    users = by_kind.get("User", {})
    permissions = by_kind.get("Permission", {})
    for n, o in list(users.items()) + list(permissions.items()):
        if get(o, "spec.rabbitmqClusterReference.name") not in clusters:
            err(f"{o['kind']}/{n}: rabbitmqClusterReference does not name a rendered RabbitmqCluster")
    for n, perm in permissions.items():
        if get(perm, "spec.userReference.name") not in users or not get(perm, "spec.vhost"):
            err(f"Permission/{n}: needs spec.vhost and a userReference to a rendered User")
        for op in ("configure", "write", "read"):
            rx = get(perm, f"spec.permissions.{op}")
            if not isinstance(rx, str) or rx in ("", ".*"):
                err(f"Permission/{n}: {op} must be an explicit regex (not empty, not .*)")
            else:
                try:
                    re.compile(rx)
                except re.error as e:
                    err(f"Permission/{n}: {op} {rx!r} is not a regex: {e}")
    # Least privilege: each client its own user; none of them the operator's administrator.
    if clusters:
        for user in ("dlr-ingest", "dlr-worker", "dlr-keda"):
            if user not in users or not any(get(p, "spec.userReference.name") == user for p in permissions.values()):
                err(f"User/{user} with a Permission is missing (least privilege on the broker)")
        keda = users.get("dlr-keda")
        if keda and get(keda, "spec.tags") != ["monitoring"]:
            err("User/dlr-keda: tags must be exactly [monitoring]")
        for perm in permissions.values():
            if get(perm, "spec.userReference.name") == "dlr-keda" and (
                get(perm, "spec.permissions.write") != "^$" or get(perm, "spec.permissions.configure") != "^$"
            ):
                err("Permission/dlr-keda: KEDA only reads (configure and write must be ^$)")
            if get(perm, "spec.userReference.name") == "dlr-ingest":
                write = re.compile(get(perm, "spec.permissions.write") or "^$")
                if not write.search("dlr") or write.search("dlr.events") or write.search("amq.topic"):
                    err("Permission/dlr-ingest: write must allow exchange dlr and nothing like dlr.events")
        for n, ta in by_kind.get("TriggerAuthentication", {}).items():
            for ref in get(ta, "spec.secretTargetRef") or []:
                if ref.get("name", "").endswith("-default-user"):
                    err(f"TriggerAuthentication/{n}: uses the administrator's {ref['name']}; use dlr-keda")
    for n, sc in by_kind.get("StorageClass", {}).items():
        if get(sc, "volumeBindingMode") != "WaitForFirstConsumer":
            err(f"StorageClass/{n}: volumeBindingMode must be WaitForFirstConsumer (zone spread)")
    unknown = kinds - {
        "Namespace",
        "ConfigMap",
        "Service",
        "Deployment",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
        "ScaledObject",
        "TriggerAuthentication",
        "ServiceMonitor",
        "PodMonitor",
        "PrometheusRule",
        "RabbitmqCluster",
        "Policy",
        "User",
        "Permission",
        "StorageClass",
    }
    for d in docs:
        if d.get("kind") in unknown and d.get("apiVersion") not in CORE_GROUPS:
            err(f"{d['kind']}: custom resource without a structural check here; add one")

    # Scalers and budgets point at real Deployments; exactly one autoscaler per Deployment.
    scaled = {}
    for kind, path in (
        ("HorizontalPodAutoscaler", "spec.scaleTargetRef.name"),
        ("ScaledObject", "spec.scaleTargetRef.name"),
    ):
        for n, o in by_kind.get(kind, {}).items():
            scaled.setdefault(get(o, path), []).append(f"{kind}/{n}")
    for n, pdb in by_kind.get("PodDisruptionBudget", {}).items():
        sel = get(pdb, "spec.selector.matchLabels") or {}
        broker_pods = [c for c in clusters if sel == {"app.kubernetes.io/name": c}]
        if broker_pods:
            # The operator's pods carry app.kubernetes.io/name=<cluster>; one at a time keeps the quorum.
            if get(pdb, "spec.maxUnavailable") != 1:
                err(f"PodDisruptionBudget/{n}: a broker budget needs maxUnavailable 1")
        elif not any(selects(sel, get(d, "spec.template.metadata.labels") or {}) for d in deployments.values()):
            err(f"PodDisruptionBudget/{n}: selects no Deployment")
        elif get(pdb, "spec.unhealthyPodEvictionPolicy") != "AlwaysAllow":
            err(
                f"PodDisruptionBudget/{n}: needs unhealthyPodEvictionPolicy AlwaysAllow "
                "(all pods unready during a broker outage must not block node drains)"
            )
    for c in clusters:
        if not any(
            get(p, "spec.selector.matchLabels") == {"app.kubernetes.io/name": c}
            for p in by_kind.get("PodDisruptionBudget", {}).values()
        ):
            err(f"RabbitmqCluster/{c}: no PodDisruptionBudget for its pods (the operator creates none)")

    # Deployment conventions.
    amqp_keys_seen = {}
    for n, d in deployments.items():
        spec = get(d, "spec.template.spec")
        if "replicas" in d["spec"]:
            err(f"Deployment/{n}: sets replicas although an autoscaler owns the count")
        if len(scaled.get(n, [])) != 1:
            err(f"Deployment/{n}: needs exactly one autoscaler, has {scaled.get(n, [])}")
        if not any(
            selects(get(p, "spec.selector.matchLabels") or {}, get(d, "spec.template.metadata.labels"))
            for p in by_kind.get("PodDisruptionBudget", {}).values()
        ):
            err(f"Deployment/{n}: no PodDisruptionBudget")
        if not any(
            c.get("topologyKey") == "topology.kubernetes.io/zone" for c in spec.get("topologySpreadConstraints") or []
        ):
            err(f"Deployment/{n}: no topology spread across zones")
        if not any(
            c.get("topologyKey") == "kubernetes.io/hostname" and c.get("whenUnsatisfiable") == "DoNotSchedule"
            for c in spec.get("topologySpreadConstraints") or []
        ):
            err(f"Deployment/{n}: needs a hostname spread with DoNotSchedule")
        psc = spec.get("securityContext") or {}
        if psc.get("runAsNonRoot") is not True or get(psc, "seccompProfile.type") != "RuntimeDefault":
            err(f"Deployment/{n}: pod needs runAsNonRoot and seccompProfile RuntimeDefault")
        grace = spec.get("terminationGracePeriodSeconds", 30)
        for c in spec["containers"]:
            cn = f"Deployment/{n}/{c['name']}"
            sc = c.get("securityContext") or {}
            if not (
                sc.get("readOnlyRootFilesystem") is True
                and sc.get("allowPrivilegeEscalation") is False
                and get(sc, "capabilities.drop") == ["ALL"]
            ):
                err(f"{cn}: needs readOnlyRootFilesystem, no privilege escalation, drop ALL")
            if c["image"].endswith(":latest") or ":" not in c["image"].rsplit("/", 1)[-1]:
                err(f"{cn}: image {c['image']} needs a pinned tag")
            for res in ("requests.cpu", "requests.memory", "limits.memory"):
                if not get(c, f"resources.{res}"):
                    err(f"{cn}: no resources.{res}")
            if get(c, "readinessProbe.httpGet.path") != "/readyz" or get(c, "livenessProbe.httpGet.path") != "/healthz":
                err(f"{cn}: readiness must probe /readyz and liveness /healthz")
            env = {}
            for ref in c.get("envFrom") or []:
                cm = configmaps.get(get(ref, "configMapRef.name"))
                if cm is None:
                    err(f"{cn}: envFrom ConfigMap {get(ref, 'configMapRef.name')} is not rendered")
                else:
                    env.update(cm.get("data") or {})
            for var in c.get("env") or []:
                if var["name"] in SECRET_ENV and "value" in var:
                    err(f"{cn}: {var['name']} is a literal; use secretKeyRef")
            for key in SECRET_ENV & set(env):
                err(f"{cn}: secret {key} comes from a ConfigMap; use secretKeyRef")
            refs = {v["name"] for v in c.get("env") or [] if get(v, "valueFrom.secretKeyRef")}
            if "AMQP_URL" not in refs:
                err(f"{cn}: AMQP_URL must come from a secretKeyRef")
            amqp_keys = {get(v, "valueFrom.secretKeyRef.key") for v in c.get("env") or [] if v["name"] == "AMQP_URL"}
            amqp_keys_seen.setdefault(tuple(sorted(k for k in amqp_keys if k)), []).append(n)
            threads = env.get("TOKIO_WORKER_THREADS", "")
            if not threads.isdigit() or not 1 <= int(threads) <= 4:
                err(f"{cn}: TOKIO_WORKER_THREADS must bound the runtime (1-4), is {threads!r}")
            if "INGEST_DRAIN_TIMEOUT_SECONDS" not in env and get(c, "startupProbe.httpGet.path") != "/healthz":
                err(f"{cn}: the worker needs a startupProbe on /healthz (its probes start after migrations)")
            # Drain timing: the grace period outlasts preStop + drain (+ confirm timeout for ingest).
            prestop = get(c, "lifecycle.preStop.sleep.seconds", 0)
            if "INGEST_DRAIN_TIMEOUT_SECONDS" in env:
                if prestop < 5:
                    err(f"{cn}: needs a preStop sleep so endpoints drop the pod before it stops accepting")
                budget = (
                    prestop
                    + int(env["INGEST_DRAIN_TIMEOUT_SECONDS"])
                    + int(env.get("INGEST_CONFIRM_TIMEOUT_MS", 0)) / 1000
                )
            else:
                budget = prestop + int(env.get("WORKER_DRAIN_TIMEOUT_SECONDS", 0))
            if grace <= budget:
                err(f"{cn}: terminationGracePeriodSeconds {grace} <= preStop + drain ({budget:g}s)")

    if len(amqp_keys_seen) != len(deployments):
        err(f"each Deployment needs its own AMQP_URL secret key (its own broker user): {amqp_keys_seen}")

    # NetworkPolicies.
    policies = list(by_kind.get("NetworkPolicy", {}).values())

    def policy_for(labels):
        return [p for p in policies if selects(get(p, "spec.podSelector.matchLabels") or {}, labels)]

    def rule_ports(rule):
        return {(p.get("port"), p.get("protocol", "TCP")) for p in rule.get("ports") or []}

    def peers(rule, key):
        return rule.get(key) or []

    for n, d in deployments.items():
        labels = get(d, "spec.template.metadata.labels") or {}
        pols = policy_for(labels)
        if not pols:
            err(f"Deployment/{n}: no NetworkPolicy selects its pods")
            continue
        egress = [r for p in pols for r in get(p, "spec.egress") or []]
        broker = [
            r
            for r in egress
            if any(
                (get(x, "podSelector.matchLabels") or {}).get("app.kubernetes.io/name") in clusters
                for x in peers(r, "to")
            )
        ]
        broker_ports = set().union(*[rule_ports(r) for r in broker]) if broker else set()
        if clusters and not {(5671, "TCP"), (5672, "TCP")} <= broker_ports:
            err(
                f"NetworkPolicy for {n}: egress to the broker must allow 5671 (TLS) and 5672, "
                f"has {sorted(broker_ports)}"
            )
        dns = [r for r in egress if (53, "UDP") in rule_ports(r)]
        if not any(get(x, "ipBlock.cidr") == "169.254.20.10/32" for r in dns for x in peers(r, "to")):
            err(f"NetworkPolicy for {n}: DNS egress must include NodeLocal DNSCache (169.254.20.10/32)")
    ingest_d, worker_d = deployments.get("dlr-ingest"), deployments.get("dlr-worker")
    if ingest_d and worker_d:
        w_labels = get(worker_d, "spec.template.metadata.labels") or {}
        i_labels = get(ingest_d, "spec.template.metadata.labels") or {}
        w_out = [
            r
            for p in policy_for(w_labels)
            for r in get(p, "spec.egress") or []
            if any(selects(get(x, "podSelector.matchLabels") or {}, i_labels) for x in peers(r, "to"))
        ]
        i_in = [
            r
            for p in policy_for(i_labels)
            for r in get(p, "spec.ingress") or []
            if any(selects(get(x, "podSelector.matchLabels") or {}, w_labels) for x in peers(r, "from"))
        ]
        if not w_out or not i_in:
            err("NetworkPolicy: worker -> ingest (replay-quarantine) must be allowed on both sides")
    for c in clusters:
        pols = [p for p in policy_for({"app.kubernetes.io/name": c}) if "Ingress" in (get(p, "spec.policyTypes") or [])]
        if not pols:
            err(f"RabbitmqCluster/{c}: no NetworkPolicy restricts ingress to the broker pods")
        for p in pols:
            for r in get(p, "spec.ingress") or []:
                ports = {port for port, _ in rule_ports(r)}
                if not r.get("from"):
                    err(f"NetworkPolicy/{get(p, 'metadata.name')}: a broker ingress rule admits every source")
                if ports & {5671, 5672} and any("namespaceSelector" in x for x in r["from"] or []):
                    err(f"NetworkPolicy/{get(p, 'metadata.name')}: AMQP must be open to the dlr pods only")
                if 15672 in ports and any("podSelector" in x and "namespaceSelector" not in x for x in r["from"] or []):
                    err(
                        f"NetworkPolicy/{get(p, 'metadata.name')}: "
                        "the management API is for KEDA and the operators only"
                    )

    if name == "overlays_prod":
        for d in deployments.values():
            for c in get(d, "spec.template.spec.containers") or []:
                if not re.search(r"@sha256:[0-9a-f]{64}$", c["image"]):
                    err(f"prod: {c['image']} must be pinned by digest")
        classes = by_kind.get("StorageClass", {})
        for n, rc in clusters.items():
            sc = get(rc, "spec.persistence.storageClassName")
            if sc not in classes:
                err(f"prod: RabbitmqCluster/{n} must use a rendered WaitForFirstConsumer StorageClass, has {sc!r}")
        hpa = by_kind.get("HorizontalPodAutoscaler", {}).get("dlr-ingest")
        if not hpa or get(hpa, "spec.minReplicas", 0) < 3:
            err("prod: ingest HPA minReplicas must be >= 3")
        for rc in clusters.values():
            if get(rc, "spec.replicas") != 3:
                err("prod: RabbitmqCluster needs 3 nodes for the quorum queues")
        for n, d in deployments.items():
            for c in get(d, "spec.template.spec.containers") or []:
                if c["name"] == "ingest":
                    for problem in served_unverified(c, configmaps):
                        err(f"prod: Deployment/{n}/ingest: {problem}")


def served_unverified(container, configmaps):
    """Problems with the providers a prod ingest container serves: each needs required
    credentials and the mode enforce (explicit or by default), never off or log-only."""
    env = {}
    for ref in container.get("envFrom") or []:
        env.update((configmaps.get(get(ref, "configMapRef.name")) or {}).get("data") or {})
    required, optional = set(env), set()
    for var in container.get("env") or []:
        ref = get(var, "valueFrom.secretKeyRef")
        if "value" in var or (ref and not ref.get("optional", False)):
            required.add(var["name"])
        elif ref:
            optional.add(var["name"])
    problems = []
    if REPLAY_KEY_ENV not in required:
        problems.append(
            f"{REPLAY_KEY_ENV} must come from a required secretKeyRef: without it quarantined copies "
            "cannot be replayed after a freshness window or with a Basic credential"
        )
    for provider, (mode_var, creds, _) in PROVIDERS.items():
        mode = env.get(mode_var)
        served = mode is not None or any(v in required | optional for v in creds)
        if not served:
            continue
        if mode is not None and mode.strip().lower() != "enforce":
            problems.append(f"{provider} is served with {mode_var}={mode}; prod must enforce")
        if not any(v in required for v in creds):
            problems.append(
                f"{provider} is served without required credentials ({' or '.join(creds)} with optional: false)"
            )
    return problems


def main():
    """Check every overlay rendered under WORK/rendered, then what spans them; 1 if any problem."""
    work, deploy = sys.argv[1], sys.argv[2]
    errors = []
    rendered = os.path.join(work, "rendered")
    all_docs = {}
    for fname in sorted(os.listdir(rendered)):
        with open(os.path.join(rendered, fname)) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        all_docs[fname[:-5]] = docs
        check(fname[:-5], docs, work, errors)
        print(f"checked {fname[:-5]}: {len(docs)} resources")

    # Switching prod to the KEDA-less component must keep prod's worker maximum.
    keda_max = [
        get(d, "spec.maxReplicaCount")
        for d in all_docs.get("overlays_prod", [])
        if d.get("kind") == "ScaledObject" and get(d, "metadata.name") == "dlr-worker"
    ]
    hpa_max = [
        get(d, "spec.maxReplicas")
        for d in all_docs.get("prod+worker-hpa", [])
        if d.get("kind") == "HorizontalPodAutoscaler" and get(d, "metadata.name") == "dlr-worker"
    ]
    if keda_max != hpa_max:
        errors.append(f"prod + worker-hpa: worker maxReplicas {hpa_max} differs from prod's KEDA maximum {keda_max}")

    # Every alert has a promtool test and a runbook section in DEPLOY.md.
    with open(os.path.join(deploy, "prometheus", "dlr-alerts.test.yaml")) as f:
        tested = set(re.findall(r"alertname: (\w+)", f.read()))
    with open(os.path.join(deploy, "DEPLOY.md")) as f:
        runbooks = set(re.findall(r"^### (Dlr\w+)", f.read(), re.MULTILINE))
    for d in all_docs.get("base", []):
        if d.get("kind") == "PrometheusRule":
            for g in get(d, "spec.groups") or []:
                for r in g.get("rules") or []:
                    if r.get("alert") and r["alert"] not in tested:
                        errors.append(f"alert {r['alert']} has no promtool test in dlr-alerts.test.yaml")
                    if r.get("alert") and r["alert"] not in runbooks:
                        errors.append(f"alert {r['alert']} has no runbook section (### {r['alert']}) in DEPLOY.md")

    for e in errors:
        print("  " + e)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
