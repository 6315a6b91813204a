"""Sessions: where a loop runs. LocalSession keeps reports and copies checkpoints."""

from slwtune import metrics as M
from slwtune.sessions import LocalSession


def test_local_session_keeps_reports_and_copies_checkpoints(tmp_path):
    session = LocalSession(checkpoint_root=str(tmp_path / "kept"), resume_dir="/resume/here")
    src = tmp_path / "tmp-ckpt"
    src.mkdir()
    (src / "state.pt").write_bytes(b"x")
    session.report({M.STEP: 4, M.TRAIN_LOSS: 1.0}, str(src))
    session.report({M.STEP: 5, M.TRAIN_LOSS: 0.9}, None)
    assert [r[M.STEP] for r in session.reports] == [4, 5]
    assert session.checkpoints == [str(tmp_path / "kept" / "step_00000004")]
    assert (tmp_path / "kept" / "step_00000004" / "state.pt").read_bytes() == b"x"
    assert session.checkpoint_dir() == "/resume/here"
    assert (session.rank, session.world_size, session.device.type) == (0, 1, "cpu")
