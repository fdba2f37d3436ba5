"""`~/.dstack/config.yml` rules of cli.md §1, against a real file under a temporary HOME."""

from __future__ import annotations

import pytest
import yaml

from dstack import client_config as cc


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    for var in ("DSTACK_SERVER_URL", "DSTACK_TOKEN", "DSTACK_PROJECT"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def read(home):
    return yaml.safe_load((home / ".dstack" / "config.yml").read_text())


def test_first_project_becomes_default_and_keys_are_sorted(home):
    cc.add_project("main", "http://127.0.0.1:3000", "tok", default=False)
    data = read(home)
    assert data == {
        "projects": [
            {"default": True, "name": "main", "token": "tok", "url": "http://127.0.0.1:3000"}
        ]
    }
    text = (home / ".dstack" / "config.yml").read_text()
    assert text.index("default") < text.index("name") < text.index("token") < text.index("url")


def test_one_default_at_most(home):
    cc.add_project("main", "http://a", "t1")
    cc.add_project("other", "http://b", "t2", default=True)
    defaults = {p["name"]: p["default"] for p in read(home)["projects"]}
    assert defaults == {"main": False, "other": True}
    cc.add_project("third", "http://c", "t3", default=False)
    assert cc.get_project_config().name == "other"


def test_update_existing_keeps_single_entry(home):
    cc.add_project("main", "http://a", "t1")
    cc.add_project("main", "http://b", "t2")
    projects = read(home)["projects"]
    assert len(projects) == 1 and projects[0]["url"] == "http://b"


def test_selection_messages(home):
    with pytest.raises(cc.ConfigError, match="No default project, specify project name"):
        cc.get_project_config()
    cc.add_project("main", "http://a", "t1")
    assert cc.get_project_config("main").token == "t1"
    with pytest.raises(cc.ConfigError, match="Project nope is not configured"):
        cc.get_project_config("nope")


def test_legacy_repos_accepted_and_dropped(home):
    path = home / ".dstack" / "config.yml"
    path.parent.mkdir(parents=True)
    path.write_text(
        "projects:\n- name: main\n  url: http://a\n  token: t\n  default: true\nrepos: []\n"
    )
    assert cc.get_project_config().name == "main"
    cc.add_project("x", "http://b", "t2", default=False)
    assert "repos" not in read(home)


def test_invalid_file_is_treated_as_empty(home):
    path = home / ".dstack" / "config.yml"
    path.parent.mkdir(parents=True)
    path.write_text("projects:\n- name: main\n  url: 5\n")
    assert cc.load_projects() == []


def test_env_overrides(home, monkeypatch):
    cc.add_project("main", "http://a", "t1")
    monkeypatch.setenv("DSTACK_TOKEN", "env-token")
    cfg = cc.get_project_config()
    assert (cfg.url, cfg.token) == ("http://a", "env-token")
    monkeypatch.setenv("DSTACK_SERVER_URL", "http://env")
    with pytest.raises(cc.ConfigError, match="project is not specified"):
        cc.get_project_config()
    monkeypatch.setenv("DSTACK_PROJECT", "p")
    cfg = cc.get_project_config()
    assert (cfg.name, cfg.url, cfg.token) == ("p", "http://env", "env-token")


def test_server_url_without_token_and_config_is_an_error(home, monkeypatch):
    monkeypatch.setenv("DSTACK_SERVER_URL", "http://env")
    with pytest.raises(cc.ConfigError):
        cc.get_project_config()


def test_set_default_and_delete(home):
    cc.add_project("a", "http://a", "t")
    cc.add_project("b", "http://b", "t", default=False)
    cc.set_default_project("b")
    assert cc.get_project_config().name == "b"
    with pytest.raises(cc.ConfigError, match="Project 'zz' not found"):
        cc.set_default_project("zz")
    assert cc.delete_project("a") and not cc.delete_project("a")
    assert [p.name for p in cc.load_projects()] == ["b"]
