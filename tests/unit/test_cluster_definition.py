"""The cluster definition is one cluster: valid against the schemas and consistent across launcher and KubeRay."""

import json
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
KUBERAY_SCHEMAS = REPO / "tests" / "schemas" / "kuberay-v1.7.0"  # vendored from ../shared/schemas: runs everywhere
SHARED_ENV = {"MLSCALE_STORAGE": "/mnt/mlscale", "MLFLOW_TRACKING_URI": "http://mlflow.mlscale.internal:5000"}


def load(name):
    return yaml.safe_load((CLUSTER / name).read_text())


def test_launcher_yaml_matches_rays_own_schema():
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(load("ray-cluster.yaml"), schema)


def test_launcher_keeps_dashboard_behind_token_auth():
    config = load("ray-cluster.yaml")
    head = " ".join(config["head_start_ray_commands"])
    assert "RAY_AUTH_MODE=token" in head
    assert "--dashboard-host=127.0.0.1" in head
    assert "0.0.0.0" not in head
    assert all("RAY_AUTH_MODE=token" in c for c in config["worker_start_ray_commands"] if "ray start" in c)


def _crd_spec_schema(name):
    crd = yaml.safe_load((KUBERAY_SCHEMAS / name).read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return _relax(version["schema"]["openAPIV3Schema"]["properties"]["spec"])


def _relax(node):
    """OpenAPI int-or-string fields accept both; x-kubernetes-* keys are extensions. Unknown fields are refused, as
    `kubectl apply --validate=strict` refuses them, unless the schema preserves unknown fields."""
    if isinstance(node, dict):
        preserve = node.get("x-kubernetes-preserve-unknown-fields", False)
        node = {k: _relax(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
        if node.get("format") == "int-or-string" or node.get("anyOf"):
            node.pop("type", None)
        if "properties" in node and "additionalProperties" not in node and not preserve:
            node["additionalProperties"] = False
        return node
    if isinstance(node, list):
        return [_relax(v) for v in node]
    return node


@pytest.mark.parametrize(("manifest", "crd", "kind"), [
    ("kuberay/raycluster.yaml", "ray.io_rayclusters.yaml", "RayCluster"),
    ("kuberay/rayjob.yaml", "ray.io_rayjobs.yaml", "RayJob"),
    ("kuberay/rayservice.yaml", "ray.io_rayservices.yaml", "RayService"),
])
def test_kuberay_manifests_match_the_crds(manifest, crd, kind):
    document = load(manifest)
    assert document["apiVersion"] == "ray.io/v1" and document["kind"] == kind
    jsonschema.validate(document["spec"], _crd_spec_schema(crd))


def test_a_typo_in_a_manifest_fails_the_crd_check():
    """The check must be able to fail: a misspelt field (rayStartParams -> rayStartParam) is refused."""
    document = load("kuberay/raycluster.yaml")
    head = document["spec"]["headGroupSpec"]
    head["rayStartParam"] = head.pop("rayStartParams")
    with pytest.raises(jsonschema.ValidationError, match="rayStartParam"):
        jsonschema.validate(document["spec"], _crd_spec_schema("ray.io_rayclusters.yaml"))


DEFINITION = CLUSTER / "definition.yaml"


def test_every_generated_file_is_what_the_definition_renders():
    """One source of truth: a hand edit to a generated file, or a definition change not rendered, fails here
    (`mlscale cluster render` fixes it)."""
    from mlscale.cluster.definition import load_definition
    from mlscale.cluster.render import render

    for name, text in render(load_definition(DEFINITION)).items():
        assert (CLUSTER / name).read_text() == text, f"cluster/{name} differs from the definition: re-render it"


def test_the_definition_names_the_installed_ray_one_image_per_kind_and_the_shared_env():
    from mlscale.cluster.definition import load_definition

    definition = load_definition(DEFINITION)
    assert definition.ray_version == ray.__version__
    assert definition.shared_env["MLSCALE_STORAGE"] == SHARED_ENV["MLSCALE_STORAGE"]
    launcher, cluster = load("ray-cluster.yaml"), load("kuberay/raycluster.yaml")["spec"]
    assert {launcher["docker"]["image"], launcher["docker"]["worker_image"]} == set(definition.images.values())
    groups = {group["groupName"]: group for group in cluster["workerGroupSpecs"]}
    for group in definition.worker_groups:  # CPU groups pull the CPU image, GPU groups the GPU image
        container = groups[group.name]["template"]["spec"]["containers"][0]
        assert container["image"] == definition.images[group.image]
        assert (groups[group.name]["minReplicas"], groups[group.name]["maxReplicas"]) == (group.min, group.max)
        node = launcher["available_node_types"][f"{group.name}_worker"]["node_config"]
        assert ("InstanceMarketOptions" in node) == (group.capacity == "spot")
        selector = groups[group.name]["template"]["spec"]["nodeSelector"]
        assert selector == definition.kubernetes.capacity_labels[group.capacity]
        if group.resources:  # passed to `ray start --resources`, which parses JSON (as the launcher's are a dict)
            assert json.loads(groups[group.name]["rayStartParams"]["resources"]) == group.resources
    assert "InstanceMarketOptions" not in launcher["available_node_types"]["head"]["node_config"]
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    assert f"rayproject/ray:{ray.__version__}-py311" in dockerfile


def test_a_bad_definition_is_refused_with_the_field_named():
    from pydantic import ValidationError

    from mlscale.cluster.definition import ClusterDefinition

    data = yaml.safe_load(DEFINITION.read_text())
    data["head"]["capacity"] = "spot"
    with pytest.raises(ValidationError, match="head.capacity must be on-demand"):
        ClusterDefinition.model_validate(data)
    data = yaml.safe_load(DEFINITION.read_text())
    data["worker_groups"][0]["min"] = 9
    with pytest.raises(ValidationError, match="min 9 > max"):
        ClusterDefinition.model_validate(data)
    data = yaml.safe_load(DEFINITION.read_text())
    data["secrets"].pop("ray_token")
    with pytest.raises(ValidationError, match="token authentication stays on"):
        ClusterDefinition.model_validate(data)


def test_rayservice_runs_the_raycluster_spec():
    cluster = load("kuberay/raycluster.yaml")["spec"]
    service = load("kuberay/rayservice.yaml")["spec"]
    assert service["rayClusterConfig"] == cluster
    assert cluster["authOptions"]["mode"] == "token"
    serve_config = yaml.safe_load(service["serveConfigV2"])
    app = serve_config["applications"][0]
    assert app["import_path"] == "mlscale.serve.build:app_builder"
    assert app["args"]["tracking_uri"] == SHARED_ENV["MLFLOW_TRACKING_URI"]


def test_rayjob_targets_the_defined_cluster_and_a_real_job():
    job = load("kuberay/rayjob.yaml")["spec"]
    assert job["clusterSelector"]["ray.io/cluster"] == load("kuberay/raycluster.yaml")["metadata"]["name"]
    script = job["entrypoint"].split()[1]
    assert (REPO / script).exists()
    config = job["entrypoint"].split("--config ")[1].split()[0]
    assert (REPO / config).exists()


def test_the_monitor_runs_on_a_schedule_against_the_defined_cluster():
    """The scheduled monitor submits jobs/monitor.py to the RayCluster's own head service with the cluster's token
    from its secret, never overlaps itself, runs as non-root, and uses the cluster's image and environment."""
    cron = load("kuberay/monitor-cronjob.yaml")
    cluster = load("kuberay/raycluster.yaml")
    assert (cron["apiVersion"], cron["kind"]) == ("batch/v1", "CronJob")
    spec = cron["spec"]
    assert len(spec["schedule"].split()) == 5 and spec["concurrencyPolicy"] == "Forbid"
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] and pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    assert container["image"] == cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
    command = container["command"]
    assert command[:3] == ["ray", "job", "submit"]
    assert command[command.index("--address") + 1] == f"http://{cluster['metadata']['name']}-head-svc:8265"
    script, config = command[command.index("--") + 2], command[command.index("--config") + 1]
    assert script == "jobs/monitor.py" and (REPO / script).exists() and (REPO / config).exists()
    env = {item["name"]: item for item in container["env"]}
    assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == cluster["metadata"]["name"]
    assert "value" not in env["RAY_AUTH_TOKEN"]  # a secret by reference, never a literal
    assert {name: env[name]["value"] for name in SHARED_ENV} == SHARED_ENV


def _ray_pod_templates():
    """The Ray pods: the RayCluster's head and workers, and the RayService's."""
    cluster = load("kuberay/raycluster.yaml")["spec"]
    service = load("kuberay/rayservice.yaml")["spec"]["rayClusterConfig"]
    for spec in (cluster, service):
        yield spec["headGroupSpec"]["template"]
        yield from (group["template"] for group in spec["workerGroupSpecs"])


def _pod_templates():
    """Every pod the definition makes: the Ray pods, the monitor's, the MLflow server's and the Job that makes its
    user."""
    yield from _ray_pod_templates()
    yield load("kuberay/monitor-cronjob.yaml")["spec"]["jobTemplate"]["spec"]["template"]
    yield mlflow_objects()["Deployment"]["spec"]["template"]
    yield mlflow_objects()["Job"]["spec"]["template"]


def mlflow_objects() -> dict:
    return {item["kind"]: item for item in load("kuberay/mlflow-server.yaml")["items"]}


def test_the_network_policy_covers_every_pod_and_opens_only_the_serve_port_to_the_ingress():
    policy = load("kuberay/networkpolicy.yaml")
    assert (policy["apiVersion"], policy["kind"]) == ("networking.k8s.io/v1", "NetworkPolicy")
    selected = policy["spec"]["podSelector"]["matchLabels"]
    for template in _pod_templates():
        labels = template["metadata"]["labels"]
        assert selected.items() <= labels.items(), labels  # no pod of the cluster escapes the policy
        assert template["spec"]["securityContext"]["runAsNonRoot"]
    internal, ingress = policy["spec"]["ingress"]
    assert internal == {"from": [{"podSelector": {"matchLabels": selected}}]}
    assert ingress["ports"] == [{"protocol": "TCP", "port": 8000}]  # not the dashboard, not the GCS
    assert list(ingress["from"][0]) == ["namespaceSelector"]


def test_drivers_land_on_on_demand_capacity_and_never_on_the_head():
    from pydantic import ValidationError

    from mlscale.cluster.definition import ClusterDefinition, load_definition

    definition = load_definition(DEFINITION)
    job = load("kuberay/rayjob.yaml")["spec"]
    assert job["entrypointNumCpus"] == definition.jobs.entrypoint_num_cpus
    assert json.loads(job["entrypointResources"]) == definition.jobs.entrypoint_resources == {"driver": 1}
    hosts = [group for group in definition.worker_groups if group.resources.get("driver")]
    assert hosts and all(group.capacity == "on-demand" for group in hosts)
    assert load("kuberay/raycluster.yaml")["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    data = yaml.safe_load(DEFINITION.read_text())
    for group in data["worker_groups"]:
        if group["capacity"] == "spot":
            group["resources"] = {"driver": 2}
        else:
            group.get("resources", {}).pop("driver", None)
    with pytest.raises(ValidationError, match="'driver' is on a spot group"):
        ClusterDefinition.model_validate(data)


def test_a_missing_or_broken_definition_names_the_file_and_the_field(tmp_path):
    from mlscale.cluster.definition import load_definition
    from mlscale.errors import ConfigError

    with pytest.raises(ConfigError, match="nowhere.yaml"):
        load_definition(tmp_path / "nowhere.yaml")
    data = yaml.safe_load(DEFINITION.read_text())
    data["worker_groups"][0]["cpu"] = "lots"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"worker_groups\.0\.cpu"):
        load_definition(tmp_path / "bad.yaml")


def test_credentials_and_api_keys_reach_the_pods_by_reference_only():
    from mlscale.cluster.definition import load_definition

    definition = load_definition(DEFINITION)
    variables = {"mlflow_username": "MLFLOW_TRACKING_USERNAME", "mlflow_password": "MLFLOW_TRACKING_PASSWORD",
                 "serve_api_keys": "MLSCALE_SERVE_API_KEYS"}
    ray_pods = list(_ray_pod_templates())
    assert len(ray_pods) == 2 * (1 + len(definition.worker_groups))  # every Ray pod, each checked below
    for template in ray_pods:  # every Ray pod runs jobs and replicas: each carries all three, by reference
        env = {item["name"]: item for item in template["spec"]["containers"][0]["env"]}
        for key, variable in variables.items():
            assert "value" not in env[variable], (variable, env[variable])
            reference = env[variable]["valueFrom"]["secretKeyRef"]
            assert reference == {"name": definition.secrets[key].secret, "key": definition.secrets[key].key}
    for template in _pod_templates():  # no other pod holds one as a literal either
        for item in template["spec"]["containers"][0].get("env", []):
            assert item["name"] not in variables.values() or "value" not in item, item
    app = yaml.safe_load(load("kuberay/rayservice.yaml")["spec"]["serveConfigV2"])["applications"][0]
    assert app["args"]["api_keys_env"] == "MLSCALE_SERVE_API_KEYS"  # /predict needs a key from that secret


def test_model_replicas_ask_for_the_serve_resource_only_on_demand_groups_carry():
    from pydantic import ValidationError

    from mlscale.cluster.definition import ClusterDefinition

    app = yaml.safe_load(load("kuberay/rayservice.yaml")["spec"]["serveConfigV2"])["applications"][0]
    assert app["args"]["replica_resources"] == {"serve": 1}
    carriers = [group for group in load("kuberay/raycluster.yaml")["spec"]["workerGroupSpecs"]
                if "serve" in json.loads(group["rayStartParams"].get("resources", "{}"))]
    assert carriers and all(group["template"]["spec"]["nodeSelector"] == {"karpenter.sh/capacity-type": "on-demand"}
                            for group in carriers)
    data = yaml.safe_load(DEFINITION.read_text())
    spot = next(group for group in data["worker_groups"] if group["capacity"] == "spot")
    spot["resources"] = {"serve": 4}
    with pytest.raises(ValidationError, match="`serve` resource is on a spot group"):
        ClusterDefinition.model_validate(data)


def test_the_mlflow_server_requires_sign_in_and_takes_its_secrets_by_reference():
    """Basic auth on; the admin, the store and the CSRF key from secrets (never in the ini or a literal); its
    Service is what tracking_uri names; non-root; inside the NetworkPolicy (checked over every pod above)."""
    import configparser
    from urllib.parse import urlparse

    from mlscale.cluster.definition import MLFLOW_SERVER_SECRET_ENV, load_definition

    definition = load_definition(DEFINITION)
    objects = mlflow_objects()
    container = objects["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    command = container["command"]
    assert command[:4] == ["mlflow", "server", "--app-name", "basic-auth"]
    assert command[command.index("--backend-store-uri") + 1] == "$(MLFLOW_BACKEND_STORE_URI)"
    env = {item["name"]: item for item in container["env"]}
    for key, variable in MLFLOW_SERVER_SECRET_ENV.items():
        assert "value" not in env[variable]
        reference = definition.secrets[key]
        assert env[variable]["valueFrom"]["secretKeyRef"] == {"name": reference.secret, "key": reference.key}
    ini = configparser.ConfigParser()
    ini.read_string(objects["ConfigMap"]["data"]["basic_auth.ini"])
    assert ini["mlflow"]["default_permission"] == "READ"  # signed-in users read; writes need a grant
    assert "admin_password" not in ini["mlflow"] and "admin_username" not in ini["mlflow"]
    assert env["MLFLOW_AUTH_CONFIG_PATH"]["value"].endswith("/basic_auth.ini")
    uri = urlparse(definition.tracking_uri)
    assert objects["Service"]["metadata"]["name"] == uri.hostname.split(".")[0]
    assert objects["Service"]["spec"]["ports"][0]["port"] == uri.port == container["ports"][0]["containerPort"]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_the_user_the_pods_sign_in_as_is_made_by_a_job_signed_in_as_the_admin():
    """No hand step: a Job runs mlscale.registry.users with the admin's and the user's credentials, all from the
    definition's secrets by reference (run against a real server in tests/integration/test_mlflow_auth.py)."""
    from mlscale.cluster.definition import MLFLOW_USER_ENV, load_definition

    definition = load_definition(DEFINITION)
    job = mlflow_objects()["Job"]
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "mlscale.registry.users"]
    assert (REPO / "mlscale" / "registry" / "users.py").exists()
    env = {item["name"]: item for item in container["env"]}
    assert env["MLFLOW_TRACKING_URI"]["value"] == definition.tracking_uri
    expected = {"MLFLOW_TRACKING_USERNAME": "mlflow_admin_username",
                "MLFLOW_TRACKING_PASSWORD": "mlflow_admin_password",
                **{variable: key for key, variable in MLFLOW_USER_ENV.items()}}
    for variable, key in expected.items():
        reference = definition.secrets[key]
        assert "value" not in env[variable]
        assert env[variable]["valueFrom"]["secretKeyRef"] == {"name": reference.secret, "key": reference.key}
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never" and job["spec"]["backoffLimit"] >= 1


@pytest.mark.parametrize(("change", "message"), [
    (lambda data: data["mlflow"].update(default_permission="EDIT"), "default_permission"),
    (lambda data: data["secrets"].pop("mlflow_admin_password"), "mlflow_admin_password are required"),
    (lambda data: data["mlflow"].update(port=5001), "does not reach the MLflow server's port 5001"),
])
def test_a_bad_mlflow_server_section_is_refused(change, message):
    from pydantic import ValidationError

    from mlscale.cluster.definition import ClusterDefinition

    data = yaml.safe_load(DEFINITION.read_text())
    change(data)
    with pytest.raises(ValidationError, match=message):
        ClusterDefinition.model_validate(data)


def test_jobs_on_the_cluster_deploy_the_service_the_rayservice_defines():
    """One source for the serve settings: the pipeline config a RayJob (and the scheduled monitor) runs with has
    the RayService application's name, prefix, API keys, replica resources and autoscaling, so a job's deploy or
    canary never replaces the keyed service with the example config's open one."""
    import shlex

    from mlscale.config import load_config, parse_overrides

    app = yaml.safe_load(load("kuberay/rayservice.yaml")["spec"]["serveConfigV2"])["applications"][0]
    cron = load("kuberay/monitor-cronjob.yaml")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    commands = [shlex.split(load("kuberay/rayjob.yaml")["spec"]["entrypoint"]),
                cron["containers"][0]["command"]]
    for words in commands:
        config = words[words.index("--config") + 1]
        sets = [value for flag, value in zip(words, words[1:], strict=False) if flag == "--set"]
        serve = load_config(REPO / config, parse_overrides(sets)).serve
        assert (serve.app_name, serve.route_prefix) == (app["name"], app["route_prefix"])
        assert serve.api_keys_env == app["args"]["api_keys_env"] == "MLSCALE_SERVE_API_KEYS"
        assert serve.replica_resources == app["args"]["replica_resources"]
        assert serve.autoscaling.model_dump().items() >= app["args"]["autoscaling"].items()


def test_rays_aws_provider_opens_nothing_for_the_launcher_config():
    """The rendered launcher YAML through Ray's own security-group step (moto's EC2): every node type already
    names the definition's pre-created group, so the provider creates no group and authorizes no rule (given no
    group it makes one with 22/tcp from 0.0.0.0/0)."""
    import copy

    import boto3
    from moto import mock_aws
    from ray.autoscaler._private.aws.config import _configure_security_group

    config = load("ray-cluster.yaml")
    group_id = yaml.safe_load(DEFINITION.read_text())["aws"]["security_group_id"]
    with mock_aws():
        ec2 = boto3.client("ec2", region_name=config["provider"]["region"])
        before = ec2.describe_security_groups()["SecurityGroups"]
        configured = _configure_security_group(copy.deepcopy(config))
        after = ec2.describe_security_groups()["SecurityGroups"]
    assert after == before  # nothing created, no rule added
    assert {name: node["node_config"]["SecurityGroupIds"] for name, node in configured["available_node_types"].items()
            } == {name: [group_id] for name in config["available_node_types"]}
    assert "security_group" not in config["provider"]
    open_to_world = [rule for group in after for rule in group["IpPermissions"]
                     if any(r.get("CidrIp") == "0.0.0.0/0" for r in rule.get("IpRanges", []))]
    assert not open_to_world


def test_the_mlflow_user_database_is_on_a_volume_only_the_server_mounts():
    """Users, passwords and permissions live on the server's own claim: the Ray pods (which all write the shared
    volume as one user) cannot reach the file that says who is admin."""
    from mlscale.cluster.mlflow_server import MLFLOW_AUTH_DIR

    items = load("kuberay/mlflow-server.yaml")["items"]
    config = next(item for item in items if item["kind"] == "ConfigMap")
    ini = next(iter(config["data"].values()))
    assert f"database_uri = sqlite:///{MLFLOW_AUTH_DIR}/auth.db" in ini
    claim = next(item for item in items if item["kind"] == "PersistentVolumeClaim")
    server = next(item for item in items if item["kind"] == "Deployment")["spec"]["template"]["spec"]
    assert {"name": "auth-db", "persistentVolumeClaim": {"claimName": claim["metadata"]["name"]}} in server["volumes"]
    ray_pods = load("kuberay/raycluster.yaml")["spec"]
    ray_claims = {volume.get("persistentVolumeClaim", {}).get("claimName")
                  for spec in [ray_pods["headGroupSpec"], *ray_pods["workerGroupSpecs"]]
                  for volume in spec["template"]["spec"].get("volumes", [])}
    assert claim["metadata"]["name"] not in ray_claims
