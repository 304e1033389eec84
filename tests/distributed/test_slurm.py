"""One real SLURM job (issue 25): a throw-away single-node SLURM from Debian's slurm-wlm (slurmctld +
slurmd on 127.0.0.1, no munge: auth/none), ``protloc predict --cluster slurm`` submits a dask-jobqueue
worker job to it, and the rows equal the single-process run's."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time

import pytest

from protloc.cli import main

pytest.importorskip("dask_jobqueue", reason="the dask extra (pip install 'protloc[dask]') is not installed")
from tests.helpers.dask import _env, _free_port, assert_same_rows, data_dir, single  # noqa: E402,F401 - fixtures


SLURM_CONF = """ClusterName=protloc
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/none
CredType=cred/none
SlurmUser={user}
SlurmdUser={user}
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
ReturnToService=2
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


@pytest.fixture
def slurm(tmp_path, monkeypatch):
    """A throw-away single-node SLURM (slurmctld + slurmd on 127.0.0.1, no munge: auth/none)."""
    missing = [b for b in ("slurmctld", "slurmd", "sbatch") if shutil.which(b) is None]
    if missing:
        pytest.skip(f"SLURM is not installed ({', '.join(missing)}; tools/install-test-system-packages.sh)")
    import getpass

    folder = tmp_path / "slurm"
    for sub in ("state", "spool"):
        (folder / sub).mkdir(parents=True)
    conf = folder / "slurm.conf"
    conf.write_text(SLURM_CONF.format(host=socket.gethostname(), ctld_port=_free_port(), slurmd_port=_free_port(),
                                      user=getpass.getuser(), dir=folder, cpus=os.cpu_count() or 1))
    monkeypatch.setenv("SLURM_CONF", str(conf))
    daemons = [subprocess.Popen([shutil.which("slurmctld"), "-D", "-c", "-f", str(conf)], env=os.environ.copy(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    time.sleep(1)
    daemons.append(subprocess.Popen([shutil.which("slurmd"), "-D", "-f", str(conf)], env=os.environ.copy(),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        state = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True).stdout.strip()
        if state == "idle":
            break
        time.sleep(0.5)
    else:
        for daemon in daemons:
            daemon.kill()
        logs = " | ".join((folder / n).read_text()[-300:] for n in ("slurmctld.log", "slurmd.log")
                          if (folder / n).exists())
        pytest.fail(f"the single-node SLURM did not come up (sinfo: {state!r}): {logs}")
    yield folder
    for daemon in reversed(daemons):
        daemon.terminate()
        daemon.wait(timeout=20)


@pytest.mark.slow
def test_one_real_slurm_job(slurm, data_dir, model_file, single, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", _env()["PYTHONPATH"])  # sbatch passes the environment to the job
    out = tmp_path / "pred.csv"
    assert main(["predict", str(data_dir), "--model", str(model_file), "--out", str(out), "--cluster", "slurm",
                 "--cluster-option", "cores=1", "--cluster-option", "memory=2GB", "--cluster-option",
                 "walltime=00:10:00", "--cluster-option", "jobs=1", "--cluster-option", "queue=debug",
                 "--cluster-option", f"local_directory={tmp_path}",
                 "--cluster-option", f"log_directory={tmp_path / 'logs'}", "--shard-size", "5"]) == 0
    assert_same_rows(out, single / "pred.csv")
    accounting = subprocess.run(["scontrol", "show", "job"], capture_output=True, text=True).stdout
    assert "JobName=dask-worker" in accounting  # the rows came from a job SLURM ran
    assert list((tmp_path / "logs").glob("dask-worker-*.err"))  # its log, not in the working folder
