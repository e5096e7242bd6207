"""Secrets: run config cannot redirect a role's endpoint or key, and URL credentials never reach metadata or logs."""

import dagster as dg
import pytest

from persona_pipeline.backends import BackendSpec
from persona_pipeline.backends.base import redact_url
from persona_pipeline.defs.resources import ModelResource, model_resource_from_env

SECRET_URL = "https://alice:s3cr3t-pw@llm.example.com:8443/v1?api_key=s3cr3t-q&region=eu"


@dg.asset
def judged(context: dg.AssetExecutionContext, judge: ModelResource) -> str:
    context.log.info(f"judge: {judge.describe()}")
    context.add_output_metadata({"judge": judge.describe(), "timeout_s": judge.timeout_s})
    return judge.describe()


@pytest.fixture()
def judge_env(monkeypatch):
    for k in ("BASE_URL", "API_KEY_ENV", "KIND", "MODEL"):
        monkeypatch.delenv(f"PERSONA_JUDGE_{k}", raising=False)
    monkeypatch.setenv("PERSONA_JUDGE_KIND", "openai")
    monkeypatch.setenv("PERSONA_JUDGE_MODEL", "judge-m")
    monkeypatch.setenv("PERSONA_JUDGE_BASE_URL", SECRET_URL)
    monkeypatch.setenv("PERSONA_JUDGE_API_KEY_ENV", "PP_JUDGE_KEY")


@pytest.mark.parametrize(
    "override", [{"base_url": "http://attacker.example/v1"}, {"api_key_env": "AWS_SECRET_ACCESS_KEY"}]
)
def test_run_config_cannot_redirect_endpoint_or_key(judge_env, override):
    resources = {"judge": model_resource_from_env("judge")}
    with pytest.raises(dg.DagsterInvalidConfigError) as err:
        dg.materialize([judged], resources=resources, run_config={"resources": {"judge": {"config": override}}})
    assert next(iter(override)) in str(err.value)
    # the legitimate knobs stay configurable through the same path
    ok = dg.materialize(
        [judged], resources=resources, run_config={"resources": {"judge": {"config": {"timeout_s": 5}}}}
    )
    assert ok.success


def test_endpoint_comes_from_env_only(judge_env):
    res = model_resource_from_env("judge")
    spec = res.spec()
    assert (spec.base_url, spec.api_key_env) == (SECRET_URL, "PP_JUDGE_KEY")
    assert "base_url" not in ModelResource.model_fields and "api_key_env" not in ModelResource.model_fields
    with pytest.raises(Exception, match="base_url"):  # in code too: not silently ignored
        ModelResource(role="judge", base_url="http://attacker.example/v1")


def test_env_endpoint_values_are_checked(monkeypatch):
    monkeypatch.setenv("PERSONA_JUDGE_BASE_URL", "file:///etc/passwd")
    with pytest.raises(ValueError, match="PERSONA_JUDGE_BASE_URL"):
        model_resource_from_env("judge").spec()
    monkeypatch.setenv("PERSONA_JUDGE_BASE_URL", "http://127.0.0.1:1/v1")
    monkeypatch.setenv("PERSONA_JUDGE_API_KEY_ENV", "X; rm -rf")
    with pytest.raises(ValueError, match="PERSONA_JUDGE_API_KEY_ENV"):
        model_resource_from_env("judge").spec()


def test_credentialed_url_never_reaches_metadata_or_logs(judge_env, tmp_path):
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        result = dg.materialize([judged], resources={"judge": model_resource_from_env("judge")}, instance=instance)
        assert result.success
        text = "\n".join(str(e) for e in instance.all_logs(result.run_id))  # the run's whole event log
    assert (
        result.output_for_node("judged") == "openai:judge-m @ https://***@llm.example.com:8443/v1?api_key=***&region=eu"
    )
    meta = result.asset_materializations_for_node("judged")[0].metadata
    assert meta["judge"].value == result.output_for_node("judged")
    assert "judge-m" in text and "llm.example.com" in text  # the log did record the description...
    assert "s3cr3t" not in text and "alice" not in text  # ...without the credentials
    assert "s3cr3t" not in repr(model_resource_from_env("judge").spec())


def test_redact_url_keeps_plain_urls():
    assert redact_url("http://127.0.0.1:8000/v1") == "http://127.0.0.1:8000/v1"
    assert redact_url("https://tok@h.example/v1") == "https://***@h.example/v1"
    assert redact_url("https://u:p@[::1]:80/v1") == "https://***@[::1]:80/v1"
    assert redact_url(None) is None
    assert "s3cr3t" not in repr(BackendSpec(kind="openai", base_url=SECRET_URL))


def test_endpoint_errors_and_reprs_do_not_leak_url_credentials(monkeypatch):
    """A real request to a closed loopback port: the error a run would log names the host, not the password."""
    import socket

    from persona_pipeline.backends import BackendError, SamplingParams
    from persona_pipeline.backends.openai_compat import OpenAIBackend

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.delenv("PP_NO_SUCH_KEY", raising=False)
    backend = OpenAIBackend(
        "m", base_url=f"http://alice:s3cr3t@127.0.0.1:{port}/v1", api_key_env="PP_NO_SUCH_KEY", max_retries=0
    )
    assert "s3cr3t" not in repr(backend) and "127.0.0.1" in repr(backend)
    with pytest.raises(BackendError) as err:
        backend.complete([[{"role": "user", "content": "hi"}]], SamplingParams(max_new_tokens=2))
    assert f"127.0.0.1:{port}" in str(err.value) and "s3cr3t" not in str(err.value) and "alice" not in str(err.value)
