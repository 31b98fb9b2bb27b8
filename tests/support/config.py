"""The services' configuration for a test: a ``scheduler.toml`` with short waits, and the environment naming it."""

from __future__ import annotations

from pathlib import Path

PROJECT = "natsched-test"
"""The ``[aws] project`` of ``write_config``: the tag value of every instance a test launches."""


def config(tmp_path: Path, **timeouts: float) -> dict[str, str]:
    """A SCHEDULER_CONFIG with the given timeouts, for the services' environment."""
    path = tmp_path / "scheduler.toml"
    lines = ['technologies = ["docker", "unikernel"]', "[timeouts]", *(f"{k} = {v}" for k, v in timeouts.items())]
    path.write_text("\n".join(lines) + "\n")
    return {"SCHEDULER_CONFIG": str(path)}


DEDICATED_PATH = ("gateway", "intake", "placement", "provisioner", "teardown")
"""Every service a dedicated job goes through, from its submission to its teardown."""


def write_config(tmp_path: Path, **lifecycle: float) -> Path:
    """Short waits for tests: fast redelivery after a crash, fast reaper and expiry."""
    conf = {"expiry_check_s": 0.2, "reaper_interval_s": 60.0, "orphan_grace_s": 300.0, **lifecycle}
    path = tmp_path / "scheduler.toml"
    path.write_text(
        'technologies = ["docker"]\n'
        "[aws]\n"
        f'project = "{PROJECT}"\n'
        "ack_wait_s = 3.0\nrunning_timeout_s = 30.0\nmax_attempts = 2\n"
        "[lifecycle]\n" + "".join(f"{k} = {v}\n" for k, v in conf.items()) + "\n"
        '[[instance_types]]\nname = "t3.medium"\nvcpu = 2\nmemory_mb = 4096\nprice_hourly = 0.04\n'
        '[[instance_types]]\nname = "m5.large"\nvcpu = 2\nmemory_mb = 8192\nprice_hourly = 0.09\n'
    )
    return path


def aws_env(endpoint: str, config: Path) -> dict[str, str]:
    """The environment of a service talking to the EC2 API at ``endpoint`` (moto), configured by ``config``."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "eu-central-1",
        "SCHEDULER_CONFIG": str(config),
    }
