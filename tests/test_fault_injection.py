"""Fault injection: a real ``assistant index`` process killed with SIGKILL at seeded random
points, a chat turn killed mid-answer, and a disk that fills up.

After every kill the live index must be whole (SQLite ``PRAGMA integrity_check``, FAISS ntotal
= passages = FTS rows, every passage's document present, the FAISS ids = the passage ids) and
the next run must complete. ``pytest -m faults --soak 200`` runs 200 kill points; CI runs
``KILLS`` of them.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from index.ingest import Indexer
from index.store import Store, StoreError
from tests.conftest import FakeEmbedder, load_jsonl, write_corpus

pytestmark = pytest.mark.faults
ROOT = Path(__file__).resolve().parent.parent
KILLS = 20


def check_live_index(index: Path) -> dict:
    """Open the live index and check it whole; returns its counts."""
    store = Store.open(index)  # FAISS ntotal = passages, ids = passage ids, unit vectors
    try:
        db = store.db
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        passages = db.execute("SELECT count(*) FROM passages").fetchone()[0]
        assert db.execute("SELECT count(*) FROM passages_fts").fetchone()[0] == passages
        assert db.execute("SELECT count(*) FROM passages WHERE document_id NOT IN "
                          "(SELECT id FROM documents)").fetchone()[0] == 0
        assert db.execute("SELECT coalesce(sum(n_passages), 0) FROM documents"
                          ).fetchone()[0] == passages
        pending = db.execute("SELECT count(*) FROM pending").fetchone()[0]
        assert store.vectors.ntotal == passages - pending
        return {"passages": passages, "paths": set(store.documents()),
                "embedded": store.vectors.ntotal, "documents": len(store.documents())}
    finally:
        store.close()


def corpus(folder: Path, rng: random.Random, files: int = 60) -> None:
    """``files`` Markdown files of two SQuAD passages each."""
    passages = load_jsonl("squad_passages.jsonl")
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        a, b = rng.sample(passages, 2)
        (folder / f"doc{i:03d}.md").write_text(
            f"# {a['title']}\n\n{a['text']}\n\n## {b['title']}\n\n{b['text']}\n", encoding="utf-8")


def mutate(folder: Path, rng: random.Random, step: int) -> None:
    """Change a few files, add one and delete one, so the next run has work to do."""
    files = sorted(folder.glob("*.md"))
    for path in rng.sample(files, min(3, len(files))):
        path.write_text(path.read_text(encoding="utf-8") + f"\nEdit {step}: {rng.random()}\n",
                        encoding="utf-8")
    (folder / f"new{step:04d}.md").write_text(f"# New {step}\n\nAdded at step {step}.\n",
                                              encoding="utf-8")
    victim = rng.choice(sorted(folder.glob("*.md")))
    victim.unlink()


def index_command(data: Path, folder: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "assistant", "--data-dir", str(data), "index", "-q",
            *extra, str(folder)]


def environment(tmp_path: Path) -> dict:
    return {**os.environ, "ASSISTANT_CONFIG": str(tmp_path / "none.toml"),
            "ASSISTANT_DEBUG": "", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def run_to_end(data: Path, folder: Path, env: dict) -> None:
    result = subprocess.run(index_command(data, folder), env=env, capture_output=True,
                            text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr


def test_index_killed_at_random_points_never_loses_the_live_index(tmp_path, request):
    kills_wanted = request.config.getoption("--soak") or KILLS
    rng = random.Random(11)
    data, folder = tmp_path / "data", tmp_path / "docs"
    index = data / "index"
    env = environment(tmp_path)
    corpus(folder, rng)
    started = time.perf_counter()
    run_to_end(data, folder, env)
    first = check_live_index(index)
    assert first["paths"] == {str(p.resolve()) for p in folder.glob("*.md")}
    kills = survived = completed = step = 0
    work_s = 3.0  # how long a run's index update lasts, re-measured on each uncut run
    while kills < kills_wanted:
        step += 1
        mutate(folder, rng, step)
        rebuild = rng.random() < 0.3  # a long run now and then: every passage re-embedded
        before = {p.name for p in index.glob("gen-*")}
        process = subprocess.Popen(index_command(data, folder, *(["--rebuild"] if rebuild else [])),
                                   env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, start_new_session=True)
        # Wait until the update has begun (its new generation folder appears), then kill
        # after a random part of the time an update takes.
        while process.poll() is None and not ({p.name for p in index.glob("gen-*")} - before):
            time.sleep(0.005)
        update_started = time.perf_counter()
        time.sleep(rng.uniform(0, work_s * 1.2))
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            kills += 1
        else:
            assert process.returncode == 0, process.stderr.read()
            work_s = max(0.5, time.perf_counter() - update_started)
            completed += 1
        process.stderr.close()
        check_live_index(index)
        survived += 1
        if step % 5 == 0:  # the next run completes and matches the folder
            run_to_end(data, folder, env)
            after = check_live_index(index)
            assert after["paths"] == {str(p.resolve()) for p in folder.glob("*.md")}
            assert len(list(index.glob("gen-*"))) <= 3
    run_to_end(data, folder, env)
    final = check_live_index(index)
    assert final["paths"] == {str(p.resolve()) for p in folder.glob("*.md")}
    print(f"\n{kills} kills, {completed} runs finished before their kill point, {survived} "
          f"checks of the live index passed, in {time.perf_counter() - started:.0f} s")


def live_counts(index: Path) -> dict | None:
    """The live index's counts, or None while there is none (or it is being replaced)."""
    try:
        return check_live_index(index)
    except (StoreError, AssertionError, sqlite3.Error):
        return None


def embedded_by(stderr: str) -> int:
    """Passages the run embedded, from its report line ("…; N embedded (…")."""
    import re

    match = re.search(r"(\d+)\s+embedded\s+\(", stderr)
    assert match, stderr
    return int(match.group(1))


@pytest.mark.parametrize("phase", ["reading", "embedding"])
def test_index_killed_in_either_phase_resumes_without_embedding_twice(tmp_path, phase):
    """kill -9 while files are being read (some published, BM25-searchable) or while passages
    are being embedded (some vectors published): the next run completes with the passage
    count of an uninterrupted run and embeds only what had no vector."""
    rng = random.Random(5)
    folder = tmp_path / "docs"
    corpus(folder, rng, files=240)
    # reading 240 small files takes about 0.3 s on a fast machine: publish often enough to
    # be caught in the middle of it
    checkpoint = "0.05" if phase == "reading" else "0.3"
    env = {**environment(tmp_path), "ASSISTANT_CHECKPOINT_SECONDS": checkpoint}
    reference = check_live_index_after(tmp_path / "reference", folder, env)
    data = tmp_path / "data"
    index = data / "index"
    process = subprocess.Popen(index_command(data, folder), env=env, cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    seen = None
    deadline = time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline:
        counts = live_counts(index)
        if counts and phase == "reading" and 0 < counts["documents"] < len(reference["paths"]):
            seen = counts
            break
        if counts and phase == "embedding" and counts["passages"] == reference["passages"] \
                and 0 < counts["embedded"] < counts["passages"]:
            seen = counts
            break
        time.sleep(0.02)
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert seen is not None, f"the run never showed a {phase} checkpoint"
    killed = check_live_index(index)  # what the kill left live is whole
    assert killed["embedded"] < reference["passages"]
    again = [sys.executable, "-m", "assistant", "--data-dir", str(data), "index", str(folder)]
    result = subprocess.run(again, env=env,
                            capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    final = check_live_index(index)
    assert final["passages"] == reference["passages"] == final["embedded"]
    assert final["paths"] == reference["paths"]
    # nothing embedded twice: the resumed run embedded exactly what the kill left without one
    assert embedded_by(result.stderr) == final["passages"] - killed["embedded"]


def check_live_index_after(data: Path, folder: Path, env: dict) -> dict:
    run_to_end(data, folder, env)
    return check_live_index(data / "index")


CHAT_SCRIPT = r"""
import sys, time
sys.path.insert(0, {root!r})
from assistant.dialogue import DialogueManager
from assistant.history import History
from index.retrieval import Retriever
from index.store import Store
from tests.conftest import FakeEmbedder, FakeGenerator

manager = DialogueManager(
    retriever=Retriever(Store.open({index!r}), FakeEmbedder()),
    generator=FakeGenerator([f"word{{i}} " for i in range(256)], delay=0.04),
    history=History({history!r}), top_k=3)
turn = manager.ask("Who won Super Bowl 50?")
print("turn", turn.turn_id, flush=True)
for fragment in turn:
    sys.stdout.write(fragment)
    sys.stdout.flush()
"""


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_chat_turn_killed_mid_answer_keeps_question_and_partial_answer(tmp_path, seed):
    from assistant.history import History

    rng = random.Random(seed)
    folder = tmp_path / "docs"
    write_corpus(folder, load_jsonl("squad_passages.jsonl"))
    Indexer(tmp_path / "index", FakeEmbedder()).run([folder])
    script = CHAT_SCRIPT.format(root=str(ROOT), index=str(tmp_path / "index"),
                                history=str(tmp_path / "history.db"))
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                               env=environment(tmp_path), cwd=ROOT)
    assert process.stdout.readline().startswith(b"turn")
    time.sleep(rng.uniform(1.5, 4.0))  # partial answers are saved at least once a second
    process.kill()
    streamed = process.stdout.read().decode()
    process.wait()
    history = History(tmp_path / "history.db")
    (conversation,) = history.conversations()
    (turn,) = history.turns(conversation["id"])
    assert turn["question"] == "Who won Super Bowl 50?" and turn["status"] == "pending"
    assert turn["answer"].startswith("word0 word1") and streamed.startswith(turn["answer"])
    assert history.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def _mount_tmpfs(folder: Path, size: str) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    if not shutil.which("mount") or os.geteuid() != 0:
        return False
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                            capture_output=True)
    return result.returncode == 0


def test_disk_full_leaves_the_old_index_live_and_says_so_in_one_line(tmp_path, settings):
    from assistant.cli import UserError, run_index

    disk = tmp_path / "small-disk"
    if not _mount_tmpfs(disk, "1m"):
        pytest.skip("cannot mount a small tmpfs here (the injected ENOSPC test in "
                    "test_faults.py covers this)")
    try:
        small, big = tmp_path / "small", tmp_path / "big"
        write_corpus(small, load_jsonl("squad_passages.jsonl")[:4])
        rng = random.Random(0)
        corpus(big, rng, files=400)
        settings = settings.replace(index_dir=disk / "index")
        run_index(settings, [small], embedder=FakeEmbedder(), quiet=True)
        before = check_live_index(disk / "index")
        generations = sorted(p.name for p in (disk / "index").glob("gen-*"))
        with pytest.raises(UserError) as error:
            run_index(settings, [big], embedder=FakeEmbedder(), quiet=True)
        message = error.value.format_message()
        assert "index stays as last published" in message and "disk is full" in message
        assert "\n" not in message
        assert check_live_index(disk / "index") == before
        # the half-written generation is gone
        assert sorted(p.name for p in (disk / "index").glob("gen-*")) == generations
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_read_only_disk_is_one_line_for_every_command(tmp_path, squad_passages):
    """A data dir on a read-only file system (root ignores permissions, not a read-only
    mount): every command says so in one line and exits 1; reading commands still work."""
    from assistant.history import History

    disk = tmp_path / "ro-disk"
    if not _mount_tmpfs(disk, "4m"):
        pytest.skip("cannot mount a tmpfs here")
    try:
        write_corpus(tmp_path / "docs", squad_passages[:3])
        Indexer(disk / "index", FakeEmbedder()).run([tmp_path / "docs"])
        history = History(disk / "history.db")
        cid = history.new_conversation()
        history.finish_turn(history.start_turn(cid, "Who?"), answer="A.")
        history.close()
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        env = {**environment(tmp_path), "ASSISTANT_DATA_DIR": str(disk)}
        for args in (["index", str(tmp_path / "docs")], ["history", "delete", "-y", cid],
                     ["history", "list"], ["info"]):
            result = subprocess.run([sys.executable, "-m", "assistant", *args], env=env,
                                    capture_output=True, text=True, timeout=300, cwd=ROOT)
            assert "Traceback" not in result.stderr, (args, result.stderr)
            if args[0] == "history" and args[1] == "list":
                assert result.returncode == 0 and "1 turns" in result.stdout, result.stderr
            elif args[0] == "info":
                assert result.returncode == 0 and "3 documents" in result.stdout, result.stderr
            else:
                assert result.returncode == 1, (args, result.stderr)
                assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
