"""The elastic run's configuration: the usual amylum config plus a ``[resilience]`` table.

The ``[resilience]`` table is read here, not in ``amylum.config`` (owned elsewhere), so one TOML
file describes the whole elastic run: ``[job]``, ``[model]``, ``[data]``, ``[training]``,
``[checkpoint]`` as for ``amylum train``, plus the fault-tolerance settings below.
Overrides ``--resilience.key=value`` work like the other sections' ``--section.key=value``.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from pathlib import Path

from amylum.config import Config, ConfigError, load_config
from amylum.tomlfile import read_toml


@dataclass
class ResilienceConfig:
    f: int = 1  # node failures at once the plan survives from host memory (>= f+1 pipelines)
    global_microbatches: int = 4  # microbatches per step over all pipelines (kept across re-plans)
    max_nodes: int = 4  # the most nodes the job may have (templates are generated up to it)
    snapshot_root: str = "/dev/shm/amylum"  # per-node host-memory snapshots: ROOT/<job>/<node>/
    job: str = ""  # snapshot namespace; "" = torchrun's --rdzv-id (TORCHELASTIC_RUN_ID)
    heartbeat_interval_s: float = 0.5
    heartbeat_timeout_s: float = 5.0  # a peer silent this long is declared lost (finds hung nodes)
    collective_timeout_s: float = 30.0  # gloo timeout: bounds a collective stuck on a dead peer
    stop_after: int = 0  # test hook: stop (exit 0) after this step, as if the job ended there; 0 = off

    def validate(self) -> None:
        if self.f < 0:
            raise ConfigError(f"resilience.f must be >= 0, got {self.f}")
        if self.global_microbatches < self.f + 1:
            raise ConfigError(f"resilience.global_microbatches = {self.global_microbatches} cannot give each of "
                              f"f+1 = {self.f + 1} pipelines a microbatch")
        if self.max_nodes < 1:
            raise ConfigError(f"resilience.max_nodes must be >= 1, got {self.max_nodes}")
        if not 0 < self.heartbeat_interval_s < self.heartbeat_timeout_s:
            raise ConfigError("need 0 < resilience.heartbeat_interval_s < resilience.heartbeat_timeout_s, got "
                              f"{self.heartbeat_interval_s} and {self.heartbeat_timeout_s}")
        if self.collective_timeout_s <= 0:
            raise ConfigError(f"resilience.collective_timeout_s must be > 0, got {self.collective_timeout_s}")


@dataclass
class ElasticConfig:
    run: Config
    resilience: ResilienceConfig


def _coerce(key: str, value, default):
    kind = type(default)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if type(value) is not kind:
        raise ConfigError(f"resilience.{key} must be a {kind.__name__}, got {value!r}")
    return value


def load_elastic_config(path: str | Path | None, overrides: list[str] = ()) -> ElasticConfig:
    """``path``'s tables and ``--section.key=value`` overrides; ``[resilience]`` ones are split off here."""
    table = read_toml(path, "config file", ConfigError) if path is not None else {}
    res_table = dict(table.pop("resilience", {}))
    run_overrides = []
    for arg in overrides:
        if arg.startswith("--resilience."):
            if "=" not in arg:
                raise ConfigError(f"override {arg!r} must look like --resilience.key=value")
            key, raw = arg[len("--resilience."):].split("=", 1)
            try:
                res_table[key] = tomllib.loads(f"v = {raw}")["v"]
            except tomllib.TOMLDecodeError:
                res_table[key] = raw
        else:
            run_overrides.append(arg)
    # the other tables go through amylum.config unchanged (same checks, same error messages): the
    # file minus [resilience] is passed as overrides so no private API of amylum.config is needed
    file_overrides = [f"--{s}.{k}={_literal(v)}" for s, values in table.items() if isinstance(values, dict)
                      for k, v in values.items()]
    bad = [s for s, v in table.items() if not isinstance(v, dict)]
    if bad:
        raise ConfigError(f"{path}: {bad[0]} must be a table")
    run = load_config(None, file_overrides + run_overrides)
    res = ResilienceConfig()
    known = {f.name: f for f in dataclasses.fields(ResilienceConfig)}
    for key, value in res_table.items():
        if key not in known:
            raise ConfigError(f"unknown key resilience.{key}; known: {', '.join(known)}")
        setattr(res, key, _coerce(key, value, getattr(res, key)))
    res.validate()
    return ElasticConfig(run, res)


def _literal(v) -> str:
    """A TOML literal for ``v`` (what ``--section.key=value`` overrides are parsed as)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return v  # string fields take the raw text
    if isinstance(v, list):
        return "[" + ", ".join(_literal_in_list(x) for x in v) + "]"
    raise ConfigError(f"cannot pass {v!r} through to amylum.config")


def _literal_in_list(v) -> str:
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return _literal(v)
