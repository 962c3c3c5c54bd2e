"""The CLI contract that scripts and later issues rely on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest



@pytest.fixture
def cli(tmp_path, cli_runner):
    return cli_runner(tmp_path / "home")


def test_add_search_list_get_delete(cli):
    code, out, _ = cli("add", "--user", "maria", "--agent", "companion", "--session", "s1", "--speaker", "Maria",
                       "--at", "2023-05-02T10:15:00+01:00", "I moved to Lisbon from Toronto.")
    assert code == 0 and out.strip().startswith("ep_")
    first = out.strip()
    code, out, _ = cli("add", "--user", "maria", "--json", "My dog is called Biscuit.")
    second = json.loads(out)["id"]
    code, out, _ = cli("search", "--user", "maria", "-k", "1", "--json", "what is the dog called")
    hits = json.loads(out)
    assert code == 0 and len(hits) == 1
    assert {"id", "text", "score", "timestamp", "session_id"} <= set(hits[0]) and hits[0]["id"] == second
    code, out, _ = cli("search", "--user", "maria", "--session", "s1", "--agent", "companion", "--json", "dog")
    assert [h["id"] for h in json.loads(out)] == [first], "session scope narrows the search"
    code, out, _ = cli("list", "--user", "maria", "--json")
    listed = json.loads(out)
    assert [e["id"] for e in listed] == [first, second]
    assert listed[0]["timestamp"] == "2023-05-02T10:15:00+01:00"
    code, out, _ = cli("get", first, "--json")
    assert json.loads(out)["text"] == "I moved to Lisbon from Toronto."
    code, out, _ = cli("delete", first)
    assert code == 0 and first in out
    code, out, err = cli("get", first)
    assert code != 0 and err.startswith("error: ")
    code, out, _ = cli("info", "--json")
    info = json.loads(out)
    assert info["episodes"] == 1 and info["users"] == ["maria"]


BAD = [
    ("empty text", ["add", "--user", "maria", "  "], "text"),
    ("naive time", ["add", "--user", "maria", "--at", "2023-05-02T10:15:00", "hello"], "timestamp"),
    ("bad time", ["add", "--user", "maria", "--at", "last tuesday", "hello"], "timestamp"),
    ("traversal user", ["add", "--user", "../../etc", "hello"], "user_id"),
    ("bad session", ["add", "--user", "maria", "--session", "a/b", "hello"], "session_id"),
    ("bad role", ["add", "--user", "maria", "--role", "wizard", "hello"], "role"),
    ("bad k", ["search", "--user", "maria", "-k", "0", "hello"], "k"),
    ("bad id", ["get", "../../etc/passwd"], "episode_id"),
    ("unknown id", ["delete", "ep_00000000000000000000000000000000"], "does not exist"),
]


@pytest.mark.parametrize("case,args,needle", BAD, ids=[b[0] for b in BAD])
def test_bad_input_exits_nonzero_with_one_line_and_writes_nothing(cli, case, args, needle):
    cli("add", "--user", "maria", "an existing episode")
    code, out, err = cli(*args)
    assert code != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0]
    code, out, _ = cli("info", "--json")
    assert json.loads(out)["episodes"] == 1


def test_missing_required_option_is_a_usage_error(cli):
    code, _, err = cli("add", "hello")
    assert code == 2 and "--user" in err


def test_installed_entry_point_and_home_env(tmp_path):
    """The real `agent-memory` script, with AGENT_MEMORY_HOME choosing the home."""
    exe = Path(sys.executable).parent / "agent-memory"
    env = {**os.environ, "AGENT_MEMORY_HOME": str(tmp_path / "envhome")}
    added = subprocess.run([str(exe), "add", "--user", "u1", "--json", "hello from a script"],
                           capture_output=True, text=True, env=env, timeout=120)
    assert added.returncode == 0, added.stderr
    episode_id = json.loads(added.stdout)["id"]
    assert (tmp_path / "envhome" / "store").is_dir()
    bad = subprocess.run([str(exe), "add", "--user", "u1", ""], capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: text:")
    listed = subprocess.run([str(exe), "list", "--user", "u1", "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert [e["id"] for e in json.loads(listed.stdout)] == [episode_id]


@pytest.mark.slow
def test_consolidate_and_modules_commands(cli):
    """`consolidate --json` on the real backbone, then `modules list/show/delete`."""
    cli("add", "--user", "maria", "--agent", "companion", "--speaker", "Maria", "--at", "2023-05-09T19:40:00+00:00",
        "I adopted a rescue dog named Biscuit.")
    code, out, err = cli("consolidate", "--user", "maria", "--rank", "4", "--epochs", "2", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["episodes_absorbed"] == 1 and len(result["modules"]) == 1
    module = result["modules"][0]
    assert {"id", "facts", "rank", "recall"} <= set(module) and module["rank"] == 4 and module["facts"] == 1
    code, out, _ = cli("modules", "list", "--user", "maria", "--json")
    listed = json.loads(out)
    assert [m["id"] for m in listed] == [module["id"]] and {"weak", "recall"} <= set(listed[0])
    code, out, _ = cli("modules", "show", module["id"])
    assert json.loads(out)["episode_ids"] and json.loads(out)["backbone"] == "smollm2-135m-instruct"
    code, out, _ = cli("list", "--user", "maria", "--json")
    assert json.loads(out)[0]["absorbed_by"] == module["id"]
    code, out, _ = cli("modules", "delete", module["id"])
    assert code == 0
    code, out, _ = cli("list", "--user", "maria", "--json")
    assert json.loads(out)[0]["absorbed_by"] is None, "its episodes are pending again"
    code, _, err = cli("modules", "show", "mod_doesnotexist")
    assert code == 2 and err.startswith("error: ")


def test_ask_json_reports_the_route_and_why(cli, tiny_model_dir):
    cli.home.mkdir(parents=True)
    (cli.home / "config.json").write_text(json.dumps({"backbone": {"model": str(tiny_model_dir), "dtype": "float32"}}))
    cli("add", "--user", "maria", "--agent", "companion", "--session", "s1", "My dog is called Biscuit.")
    code, out, _ = cli("ask", "--user", "maria", "--agent", "companion", "--session", "s2", "--json",
                       "what is the dog called")
    data = json.loads(out)
    assert code == 0 and data["route"] == "rag" and data["modules"] == []
    assert {"answer", "route", "modules", "evidence", "reason", "latency_ms"} <= set(data)
    assert data["evidence"][0]["text"] == "My dog is called Biscuit." and data["reason"]
    code, out, _ = cli("ask", "--user", "maria", "--route", "none", "--json", "what is the dog called")
    assert code == 0 and json.loads(out)["route"] == "none" and json.loads(out)["evidence"] == []
    code, _, err = cli("ask", "--user", "maria", "--route", "psychic", "what is the dog called")
    assert code == 2 and err.startswith("error: route")
