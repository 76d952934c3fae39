import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


@pytest.fixture
def interrupted_run(tmp_path):
    """``run(problem, stop_at=25) -> (uninterrupted, resumed)``: a matching problem run through, then run again with a
    checkpoint, stopped at iteration ``stop_at`` and resumed from its last checkpoint (batch 1, generator seed 1 each
    time)."""
    from gradleak.attacks.matching import run_matching

    class Stop(Exception):
        pass

    def run(make_problem, stop_at=25):
        def stop(step):
            if step.iteration >= stop_at:
                raise Stop

        def go(**kw):
            return run_matching(make_problem(), batch_size=1, generator=torch.Generator().manual_seed(1), **kw)

        full = go()
        ck = tmp_path / "run.ckpt"
        with pytest.raises(Stop):
            go(checkpoint=ck, on_step=stop)
        assert ck.exists()
        return full, go(checkpoint=ck)

    return run
