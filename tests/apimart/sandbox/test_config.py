"""Configs and faults can be built from command line options and JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from apimart import spec
from apimart.sandbox import FaultRule, Faults, SandboxConfig, config_from_options, load_faults


def test_defaults_are_all_off() -> None:
    """A default sandbox has no faults, the documented prices and shapes, and no key dedup."""
    config = SandboxConfig()
    assert config.faults == Faults()
    assert config.prices == spec.ESTIMATED_PRICES
    assert config.price("4K", 10) == spec.estimate_cost("4k", 10)
    assert (config.submit_shape, config.url_shape) == ("list", "list")
    assert config.honour_idempotency_key is False


def test_faults_from_json_text_or_file(tmp_path: Path) -> None:
    """Faults load from JSON text or a file; an unknown fault or field is refused."""
    text = json.dumps({"submit_429": 0.5, "task_fail": {"rate": 1, "times": 2}, "payment_after": 3})
    path = tmp_path / "faults.json"
    path.write_text(text, encoding="utf-8")
    for source in (text, path, str(path)):
        faults = load_faults(source)
        assert faults.submit_429 == FaultRule(rate=0.5)
        assert faults.task_fail == FaultRule(rate=1, times=2)
        assert faults.payment_after == 3
    assert load_faults(None) == Faults()
    with pytest.raises(ValueError):
        load_faults('{"no_such_fault": 1}')
    with pytest.raises(ValueError):
        load_faults('{"submit_429": {"rate": 1, "bogus": 2}}')


def test_config_from_options_and_mapping() -> None:
    """Command-line options and a mapping build a config; an unknown setting is refused."""
    config = config_from_options(
        api_key="sk-cli", time_scale=0.01, seed=3, faults='{"download_html": 1}'
    )
    assert (config.api_key, config.time_scale, config.seed) == ("sk-cli", 0.01, 3)
    assert config.faults.download_html == FaultRule(rate=1.0)
    assert config_from_options().api_key == "sk-sandbox"
    mapped = SandboxConfig.from_mapping({"url_shape": "string", "faults": {"query_5xx": 0.1}})
    assert mapped.url_shape == "string"
    assert mapped.faults.query_5xx == FaultRule(rate=0.1)
    with pytest.raises(ValueError):
        SandboxConfig.from_mapping({"nope": 1})
