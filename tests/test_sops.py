"""SOPS secrets: the real sops tool's output decrypts, ours round-trips, tampering is refused.

Compatibility is proven on a file written by the real sops (3.9.0), shared beside
the repository (``shared/fixtures/sops``), and by the MAC: a single byte of
difference in how values are typed or hashed fails it.
"""

from __future__ import annotations

import base64
import hashlib
import os
import pty
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyrage
import pytest
import yaml
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from helpers import cli
from setpoint.config import load_config
from setpoint.render.sops import (
    SopsError,
    decrypt,
    encrypt,
    fingerprint,
    load_identities,
)
from setpoint.render.sops_formats import go_resolve
from setpoint.render.sops_tree import go_float


def _shared() -> Path | None:
    if os.environ.get("SETPOINT_SHARED"):
        return Path(os.environ["SETPOINT_SHARED"])
    for candidate in (Path(__file__).parents[2] / "shared", Path("/work/shared")):
        if candidate.is_dir():
            return candidate
    return None


SHARED = _shared()


@pytest.fixture
def fixture_dir() -> Path:
    if SHARED is None or not (SHARED / "fixtures" / "sops" / "age.yaml").is_file():
        pytest.skip(
            "shared/fixtures/sops not found (set SETPOINT_SHARED, or clone shared/ beside the "
            "repository)"
        )
    return SHARED / "fixtures" / "sops"


FIXTURE_PLAIN = {
    "apiVersion": "v1",
    "kind": "Secret",
    "metadata": {"name": "age"},
    "stringData": {"key": "value"},
}

SECRET = "hunter2-Sup3rSecret"  # must never show up in an error or in an encrypted file


class Key:
    """A fresh age key pair, with its identity file written as age-keygen writes it."""

    def __init__(self, directory: Path, name: str = "key") -> None:
        self._identity = pyrage.x25519.Identity.generate()
        self.recipient = str(self._identity.to_public())
        self.secret = str(self._identity)
        self.file = directory / f"{name}.txt"
        self.file.write_text(
            f"# created: 2024-01-01T00:00:00Z\n# public key: {self.recipient}\n{self.secret}\n"
        )
        self.file.chmod(0o600)

    def identities(self) -> list[Any]:
        return load_identities(self.file, env={})


@pytest.fixture
def key(tmp_path: Path) -> Key:
    return Key(tmp_path, "key")


@pytest.fixture
def other_key(tmp_path: Path) -> Key:
    return Key(tmp_path, "other")


PLAIN_YAML = f"""\
db:
    password: {SECRET}
    port: 5432
    ratio: 0.25
    big: 1e20
    enabled: true
    off: false
    nothing:
    empty: ""
    text: "5432"
    yes_word: yes
    hex: 0x1F
    time: 12:30
    date: 2024-01-01
    unicode: "ünïcødé ✓"
    multi: |
        line one
        line two
servers:
    - name: a
      weight: 1.5
      tags: [x, y]
    - 42
    - true
note_unencrypted: left in clear
""".encode()

PLAIN_TREE = {
    "db": {
        "password": SECRET,
        "port": 5432,
        "ratio": 0.25,
        "big": 1e20,
        "enabled": True,
        "off": False,
        "nothing": None,
        "empty": "",
        "text": "5432",
        "yes_word": "yes",  # go-yaml (and so sops) reads yes as a string, not a boolean
        "hex": 31,
        "time": "12:30",  # YAML 1.1's sexagesimal 750 is not go-yaml's
        "date": "2024-01-01",
        "unicode": "ünïcødé ✓",
        "multi": "line one\nline two\n",
    },
    "servers": [{"name": "a", "weight": 1.5, "tags": ["x", "y"]}, 42, True],
    "note_unencrypted": "left in clear",
}


def _no_leak(exc: BaseException, *also: str) -> str:
    text = str(exc)
    for secret in (SECRET, "AGE-SECRET-KEY", *also):
        assert secret not in text, text
    return text


# ---------------------------------------------------------------- the real sops tool's output


def test_real_sops_file_decrypts_to_the_documented_plaintext(fixture_dir: Path) -> None:
    ids = load_identities(fixture_dir / "age.key", env={})
    assert [i.recipient for i in ids] == [
        "age1l44xcng8dqj32nlv6d930qvvrny05hglzcv9qpc7kxjc6902ma4qufys29"
    ]
    tree = decrypt((fixture_dir / "age.yaml").read_bytes(), "secrets/age.yaml", ids)
    assert tree == FIXTURE_PLAIN


def test_real_sops_file_decrypts_with_the_sops_environment_variables(fixture_dir: Path) -> None:
    data = (fixture_dir / "age.yaml").read_bytes()
    by_file = load_identities(env={"SOPS_AGE_KEY_FILE": str(fixture_dir / "age.key")})
    assert decrypt(data, "age.yaml", by_file) == FIXTURE_PLAIN
    # SOPS_AGE_KEY holds the keys themselves: comment lines skipped, several per line allowed.
    text = (fixture_dir / "age.key").read_text()
    extra = str(pyrage.x25519.Identity.generate())
    key_line = next(line for line in text.splitlines() if line.startswith("AGE-SECRET-KEY-1"))
    by_value = load_identities(env={"SOPS_AGE_KEY": f"# mine\n{extra}   {key_line}\n"})
    assert len(by_value) == 2
    assert decrypt(data, "age.yaml", by_value) == FIXTURE_PLAIN


def test_real_sops_file_with_a_value_edited_in_clear_fails_the_mac(fixture_dir: Path) -> None:
    ids = load_identities(fixture_dir / "age.key", env={})
    data = (fixture_dir / "age.yaml").read_bytes()
    # metadata.name is outside encrypted_regex: in clear, but covered by the MAC.
    tampered = data.replace(b"  name: age\n", b"  name: agf\n")
    assert tampered != data
    with pytest.raises(SopsError, match="MAC mismatch") as err:
        decrypt(tampered, "secrets/age.yaml", ids)
    assert str(err.value).startswith("secrets/age.yaml: ")
    _no_leak(err.value)


def test_real_sops_file_with_a_changed_ciphertext_is_refused(fixture_dir: Path) -> None:
    ids = load_identities(fixture_dir / "age.key", env={})
    data = (fixture_dir / "age.yaml").read_bytes()
    tampered = data.replace(b"data:mHeXsmQ=", b"data:mHeXsmM=")
    assert tampered != data
    with pytest.raises(SopsError, match=r"stringData\.key.*fails authentication") as err:
        decrypt(tampered, "secrets/age.yaml", ids)
    _no_leak(err.value)


def test_real_sops_file_with_a_tampered_mac_is_refused(fixture_dir: Path) -> None:
    ids = load_identities(fixture_dir / "age.key", env={})
    data = (fixture_dir / "age.yaml").read_bytes()
    mac_data = re.search(rb"mac: ENC\[AES256_GCM,data:(.)", data)
    assert mac_data is not None
    flipped = b"A" if mac_data.group(1) != b"A" else b"B"
    bad_mac = data[: mac_data.start(1)] + flipped + data[mac_data.end(1) :]
    with pytest.raises(SopsError, match=r"sops\.mac.*fails authentication"):
        decrypt(bad_mac, "age.yaml", ids)
    # The MAC is bound to lastmodified (its additional data): moving the date breaks it too.
    redated = data.replace(b"2024-11-12T13:33:42Z", b"2024-11-12T13:33:43Z")
    with pytest.raises(SopsError, match=r"sops\.mac"):
        decrypt(redated, "age.yaml", ids)
    emptied = re.sub(rb"mac: ENC\[[^\n]*", b'mac: ""', data)
    with pytest.raises(SopsError, match="MAC mismatch"):
        decrypt(emptied, "age.yaml", ids)


def test_every_truncation_of_a_real_sops_file_is_refused(fixture_dir: Path) -> None:
    ids = load_identities(fixture_dir / "age.key", env={})
    data = (fixture_dir / "age.yaml").read_bytes()
    # Only the version line is outside what decryption and the MAC depend on (as in sops).
    end = data.index(b"\n  version:")
    accepted = []
    for cut in range(0, end, 3):
        try:
            decrypt(data[:cut], "age.yaml", ids)
        except SopsError as exc:
            _no_leak(exc)
        else:
            accepted.append(cut)
    assert accepted == []


def test_wrong_key_is_refused_naming_the_file_and_recipients(
    fixture_dir: Path, other_key: Key
) -> None:
    data = (fixture_dir / "age.yaml").read_bytes()
    with pytest.raises(SopsError) as err:
        decrypt(data, "envs/prod/age.yaml", other_key.identities())
    text = _no_leak(err.value, other_key.secret)
    assert text.startswith("envs/prod/age.yaml: none of the agent's age identities")
    assert other_key.recipient in text  # which key the agent has ...
    assert "age1l44xcng8dqj32nlv6d930qvvrny05hglzcv9qpc7kxjc6902ma4qufys29" in text  # ... and needs


def test_no_identity_configured_says_how_to_configure_one(fixture_dir: Path) -> None:
    assert load_identities(None, env={}) == []
    with pytest.raises(SopsError, match=r"age\.yaml: .*no age identity.*ageKeyFile.*SOPS_AGE_KEY"):
        decrypt((fixture_dir / "age.yaml").read_bytes(), "age.yaml", [])


# ---------------------------------------------------------------- our encryptor


def test_yaml_round_trip_encrypts_every_value_but_the_unencrypted_suffix(key: Key) -> None:
    out = encrypt(PLAIN_YAML, "db.yaml", [key.recipient])
    assert SECRET.encode() not in out
    doc = yaml.safe_load(out)
    assert doc["db"]["port"].startswith("ENC[AES256_GCM,data:")
    assert doc["db"]["port"].endswith(",type:int]")
    assert doc["db"]["ratio"].endswith(",type:float]")
    assert doc["db"]["enabled"].endswith(",type:bool]")
    assert doc["servers"][0]["tags"][1].endswith(",type:str]")
    assert doc["db"]["empty"] == "" and doc["db"]["nothing"] is None  # as sops: never encrypted
    assert doc["note_unencrypted"] == "left in clear"
    meta = doc["sops"]
    assert meta["version"] == "3.9.0" and meta["unencrypted_suffix"] == "_unencrypted"
    assert meta["age"][0]["recipient"] == key.recipient
    assert meta["age"][0]["enc"].startswith("-----BEGIN AGE ENCRYPTED FILE-----\n")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", meta["lastmodified"])
    assert decrypt(out, "db.yaml", key.identities()) == PLAIN_TREE


def test_yaml_round_trip_with_encrypted_regex_keeps_the_rest_in_clear(key: Key) -> None:
    out = encrypt(PLAIN_YAML, "db.yaml", [key.recipient], encrypted_regex="^(password|multi)$")
    doc = yaml.safe_load(out)
    assert doc["db"]["password"].startswith("ENC[") and doc["db"]["multi"].startswith("ENC[")
    assert doc["db"]["port"] == 5432 and doc["db"]["text"] == "5432"
    assert doc["sops"]["encrypted_regex"] == "^(password|multi)$"
    assert "unencrypted_suffix" not in doc["sops"]
    assert decrypt(out, "db.yaml", key.identities()) == PLAIN_TREE
    # The values left in clear are under the MAC all the same.
    tampered = out.replace(b"    port: 5432\n", b"    port: 5433\n")
    assert tampered != out
    with pytest.raises(SopsError, match=r"db\.yaml: MAC mismatch") as err:
        decrypt(tampered, "db.yaml", key.identities())
    _no_leak(err.value)


def test_json_round_trip(key: Key) -> None:
    plain = (
        '{"db": {"password": "' + SECRET + '", "port": 5432, "ratio": 2.5, "whole": 3.0,\n'
        ' "on": false, "none": null, "hosts": ["a", {"b": [1, true]}]}, "id_unencrypted": 7}'
    ).encode()
    out = encrypt(plain, "db.json", [key.recipient])
    assert SECRET.encode() not in out
    import json

    doc = json.loads(out)
    assert doc["db"]["port"].endswith("type:int]") and doc["id_unencrypted"] == 7
    assert decrypt(out, "db.json", key.identities()) == {
        "db": {
            "password": SECRET,
            "port": 5432,
            "ratio": 2.5,
            "whole": 3.0,
            "on": False,
            "none": None,
            "hosts": ["a", {"b": [1, True]}],
        },
        "id_unencrypted": 7,
    }
    regex = encrypt(plain, "db.json", [key.recipient], encrypted_regex="^password$")
    assert json.loads(regex)["db"]["ratio"] == 2.5
    assert decrypt(regex, "db.json", key.identities())["db"]["password"] == SECRET


def test_dotenv_decryption(key: Key) -> None:
    plain = f"# database\nDB_PASSWORD={SECRET}\nMULTI=a\\nb\nDB_HOST_unencrypted=db.local\n"
    out = encrypt(plain.encode(), "app.env", [key.recipient])
    lines = out.decode().splitlines()
    assert lines[0].startswith("DB_PASSWORD=ENC[AES256_GCM,data:")
    assert "DB_HOST_unencrypted=db.local" in lines
    # The metadata is flattened as sops writes it for dotenv.
    assert f"sops_age__list_0__map_recipient={key.recipient}" in lines
    assert any(line.startswith("sops_mac=ENC[AES256_GCM,") for line in lines)
    assert any(line.startswith("sops_lastmodified=") for line in lines)
    assert "sops_unencrypted_suffix=_unencrypted" in lines
    assert SECRET.encode() not in out
    tree = decrypt(out, "app.env", key.identities())
    assert tree == {"DB_PASSWORD": SECRET, "MULTI": "a\nb", "DB_HOST_unencrypted": "db.local"}
    assert all(isinstance(v, str) for v in tree.values())
    tampered = out.replace(b"DB_HOST_unencrypted=db.local", b"DB_HOST_unencrypted=evil.example")
    with pytest.raises(SopsError, match=r"app\.env: MAC mismatch") as err:
        decrypt(tampered, "app.env", key.identities())
    _no_leak(err.value)


def test_removing_or_moving_an_encrypted_value_is_refused(key: Key) -> None:
    out = encrypt(b"a: one\nb: two\nc: three\n", "s.yaml", [key.recipient])
    lines = out.decode().split("\n")
    removed = "\n".join(line for line in lines if not line.startswith("b: ")).encode()
    with pytest.raises(SopsError, match="MAC mismatch"):
        decrypt(removed, "s.yaml", key.identities())
    # Each value is bound to its key path: swapping two ciphertexts is caught.
    a = next(line for line in lines if line.startswith("a: "))[3:]
    c = next(line for line in lines if line.startswith("c: "))[3:]
    swapped = out.replace(a.encode(), b"@@").replace(c.encode(), a.encode())
    swapped = swapped.replace(b"@@", c.encode())
    with pytest.raises(SopsError, match="at a: the value fails authentication"):
        decrypt(swapped, "s.yaml", key.identities())


def test_every_recipient_can_decrypt_alone(key: Key, other_key: Key) -> None:
    out = encrypt(PLAIN_YAML, "db.yaml", [key.recipient, other_key.recipient])
    assert decrypt(out, "db.yaml", key.identities()) == PLAIN_TREE
    assert decrypt(out, "db.yaml", other_key.identities()) == PLAIN_TREE


def test_a_single_key_group_is_read_like_top_level_keys(key: Key) -> None:
    doc = yaml.safe_load(encrypt(b"a: 1\n", "s.yaml", [key.recipient]))
    doc["sops"]["key_groups"] = [{"age": doc["sops"].pop("age")}]
    regrouped = yaml.safe_dump(doc).encode()
    assert decrypt(regrouped, "s.yaml", key.identities()) == {"a": 1}
    doc["sops"]["key_groups"] *= 2
    with pytest.raises(SopsError, match="Shamir"):
        decrypt(yaml.safe_dump(doc).encode(), "s.yaml", key.identities())


def test_errors_never_show_the_plaintext(key: Key, other_key: Key) -> None:
    broken = f"db:\n  password: {SECRET}\n bad: [\n".encode()
    with pytest.raises(SopsError, match=r"db.yaml: not valid yaml: line \d+") as err:
        encrypt(broken, "db.yaml", [key.recipient])
    _no_leak(err.value)
    with pytest.raises(SopsError, match="not an age X25519 recipient") as err:
        encrypt(PLAIN_YAML, "db.yaml", [key.secret])
    _no_leak(err.value, key.secret)
    out = encrypt(PLAIN_YAML, "db.yaml", [key.recipient])
    for bad in (out.replace(b"servers:", b"servers_x:"), out[: len(out) // 2]):
        with pytest.raises(SopsError) as err:
            decrypt(bad, "db.yaml", key.identities())
        _no_leak(err.value)
    with pytest.raises(SopsError) as err:
        decrypt(out, "db.yaml", other_key.identities())
    _no_leak(err.value, other_key.secret)


def test_plain_file_and_unsupported_formats_are_refused(key: Key) -> None:
    with pytest.raises(
        SopsError, match=r"s\.yaml: it has no sops metadata.*setpoint secrets encrypt"
    ):
        decrypt(b"password: x\n", "s.yaml", key.identities())
    with pytest.raises(SopsError, match=r"s\.json: it has no sops metadata"):
        decrypt(b'{"a": "b"}', "s.json", key.identities())
    with pytest.raises(SopsError, match=r"s\.env: it has no sops metadata"):
        decrypt(b"A=b\n", "s.env", key.identities())
    with pytest.raises(SopsError, match=r"s\.ini: unsupported file type"):
        decrypt(b"[a]\nb=c\n", "s.ini", key.identities())
    out = encrypt(b"a: b\n", "s.yaml", [key.recipient])
    with pytest.raises(SopsError, match="already has a 'sops' key"):
        encrypt(out, "s.yaml", [key.recipient])
    pgp_only = re.sub(rb"    age:\n(?:        .*\n)+", b"    age: []\n", out)
    pgp_only = pgp_only.replace(
        b"    pgp: []", b"    pgp:\n        -   fp: ABCD\n            enc: x"
    )
    with pytest.raises(SopsError, match=r"no age recipient \(it is encrypted for: pgp\)"):
        decrypt(pgp_only, "s.yaml", key.identities())


# ---------------------------------------------------------------- files built by hand from the spec


def _enc(key: bytes, plain: bytes, aad: str, kind: str) -> str:
    """One value as sops' aes/cipher.go writes it: 32-byte nonce, AAD = key path + ":"."""
    iv = os.urandom(32)
    sealed = AESGCM(key).encrypt(iv, plain, aad.encode())
    b64 = base64.b64encode
    return (
        f"ENC[AES256_GCM,data:{b64(sealed[:-16]).decode()},iv:{b64(iv).decode()},"
        f"tag:{b64(sealed[-16:]).decode()},type:{kind}]"
    )


def _age(key: bytes, recipient: str) -> str:
    wrapped: bytes = pyrage.encrypt(key, [pyrage.x25519.Recipient.from_str(recipient)], True)
    return wrapped.decode()


def test_a_file_built_by_hand_from_the_sops_spec_decrypts(key: Key) -> None:
    """Independent of our encryptor: typed values and the MAC written as sops.go defines them."""
    data_key = os.urandom(32)
    stamp = "2024-05-06T07:08:09Z"
    # The MAC: SHA-512 over every non-null value in document order, ints in decimal, floats
    # in Go's shortest form, booleans as Python spells them (True/False); hex, upper case.
    hashed = [
        b"42",
        b"2.5",
        b"True",
        SECRET.encode(),
        b"False",
        b"7",
        b"3",
        b"100000000000000000000",
    ]
    mac = hashlib.sha512(b"".join(hashed)).hexdigest()
    doc = {
        "app": {
            "n": _enc(data_key, b"42", "app:n:", "int"),
            "f": _enc(data_key, b"2.5", "app:f:", "float"),
            "list": [_enc(data_key, b"True", "app:list:", "bool")],
            "s": _enc(data_key, SECRET.encode(), "app:s:", "str"),
            "none": None,
        },
        "debug_unencrypted": False,
        "count_unencrypted": 7,
        "ratio_unencrypted": 3.0,
        "big_unencrypted": 1e20,
        "sops": {
            "age": [{"recipient": key.recipient, "enc": _age(data_key, key.recipient)}],
            "lastmodified": stamp,
            "mac": _enc(data_key, mac.upper().encode(), stamp, "str"),
            "unencrypted_suffix": "_unencrypted",
            "version": "3.9.0",
        },
    }
    data = yaml.safe_dump(doc, sort_keys=False).encode()
    assert decrypt(data, "hand.yaml", key.identities()) == {
        "app": {"n": 42, "f": 2.5, "list": [True], "s": SECRET, "none": None},
        "debug_unencrypted": False,
        "count_unencrypted": 7,
        "ratio_unencrypted": 3.0,
        "big_unencrypted": 1e20,
    }
    doc["count_unencrypted"] = 8
    with pytest.raises(SopsError, match="MAC mismatch"):
        decrypt(yaml.safe_dump(doc, sort_keys=False).encode(), "hand.yaml", key.identities())


def test_a_dotenv_file_built_by_hand_from_the_sops_spec_decrypts(key: Key) -> None:
    """KEY=VALUE lines, "\\n" escapes, metadata flattened into sops_* keys (stores/dotenv)."""
    data_key = os.urandom(32)
    stamp = "2024-05-06T07:08:09Z"
    newline, escaped = "\n", "\\n"
    multi = "line1" + newline + "line2"
    # In clear, HOST_unencrypted=a\nb stands for "a", newline, "b": the MAC hashes the latter.
    mac = hashlib.sha512((SECRET + multi + "a" + newline + "b").encode()).hexdigest().upper()
    enc_password = _enc(data_key, SECRET.encode(), "PASSWORD:", "str")
    enc_multi = _enc(data_key, multi.encode(), "MULTI:", "str")
    wrapped = _age(data_key, key.recipient).replace(newline, escaped)
    lines = [
        "# a comment: not in the MAC",
        f"PASSWORD={enc_password}",
        f"MULTI={enc_multi}",
        f"HOST_unencrypted=a{escaped}b",
        f"sops_age__list_0__map_enc={wrapped}",
        f"sops_age__list_0__map_recipient={key.recipient}",
        f"sops_lastmodified={stamp}",
        f"sops_mac={_enc(data_key, mac.encode(), stamp, 'str')}",
        "sops_unencrypted_suffix=_unencrypted",
        "sops_version=3.9.0",
    ]
    data = (newline.join(lines) + newline).encode()
    assert decrypt(data, "hand.env", key.identities()) == {
        "PASSWORD": SECRET,
        "MULTI": multi,
        "HOST_unencrypted": "a" + newline + "b",
    }


# ---------------------------------------------------------------- how sops types and hashes values


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("yes", "yes"),
        ("on", "on"),
        ("True", True),
        ("FALSE", False),
        ("~", None),
        ("0x1F", 31),
        ("0o17", 15),
        ("0777", 511),
        ("09", 9.0),
        ("1_000", 1000),
        ("-12", -12),
        ("+7", 7),
        (".5", 0.5),
        ("1e3", 1000.0),
        ("1:20", "1:20"),
        ("2024-01-01", "2024-01-01"),
        ("12abc", "12abc"),
        ("<<", "<<"),
    ],
)
def test_plain_yaml_scalars_are_typed_as_go_yaml_types_them(text: str, value: Any) -> None:
    assert go_resolve(text)[1] == value
    assert type(go_resolve(text)[1]) is type(value)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (100.0, "100"),
        (0.1, "0.1"),
        (1e21, "1000000000000000000000"),
        (1e-7, "0.0000001"),
        (-0.0, "-0"),
        (123456789.125, "123456789.125"),
        (float("inf"), "+Inf"),
    ],
)
def test_floats_are_hashed_as_go_formats_them(value: float, text: str) -> None:
    assert go_float(value) == text


# ---------------------------------------------------------------- identities and configuration


def test_identity_sources_are_parsed_as_sops_parses_them(tmp_path: Path, key: Key) -> None:
    two = Key(tmp_path, "two")
    both = tmp_path / "both.txt"
    both.write_text(f"# comment\n\n{key.secret}\r\n{two.secret}\n")
    ids = load_identities(both, env={"SOPS_AGE_KEY_FILE": str(key.file)})
    assert [i.recipient for i in ids] == [key.recipient, two.recipient]  # duplicates dropped
    assert key.secret not in repr(ids)
    assert fingerprint(ids) == fingerprint(list(reversed(ids)) + ids[:1])
    assert fingerprint(ids) != fingerprint(ids[:1])
    bad = tmp_path / "bad.txt"
    bad.write_text(f"# ok\n{key.secret}\n{key.secret} trailing-junk\n")
    with pytest.raises(SopsError, match=r"bad\.txt, line 3: not a valid age X25519") as err:
        load_identities(bad, env={})
    _no_leak(err.value, key.secret)
    with pytest.raises(SopsError, match=r"missing\.txt \(SOPS_AGE_KEY_FILE\): cannot read"):
        load_identities(env={"SOPS_AGE_KEY_FILE": str(tmp_path / "missing.txt")})
    with pytest.raises(SopsError, match=r"SOPS_AGE_KEY, line 1: not an age identity"):
        load_identities(env={"SOPS_AGE_KEY": "ssh-ed25519 AAAA"})
    locked = tmp_path / "locked.txt"
    locked.write_bytes(pyrage.encrypt(key.secret.encode(), [two._identity.to_public()], True))
    with pytest.raises(SopsError, match="passphrase-protected"):
        load_identities(locked, env={})


def test_config_decryption_age_key_file_is_relative_to_the_config(tmp_path: Path) -> None:
    conf = tmp_path / "etc" / "setpoint.yaml"
    conf.parent.mkdir()
    conf.write_text(
        "sources: [{name: repo, url: /srv/repo}]\n"
        "stacks: [{name: web, source: repo}]\n"
        "decryption: {ageKeyFile: keys/age.txt}\n"
    )
    cfg = load_config(conf)
    assert cfg.decryption.age_key_file == tmp_path / "etc" / "keys" / "age.txt"
    conf.write_text(
        "sources: [{name: repo, url: /srv/repo}]\nstacks: [{name: web, source: repo}]\n"
    )
    assert load_config(conf).decryption.age_key_file is None


# ---------------------------------------------------------------- the CLI


def test_cli_encrypt_in_place_then_decrypt(tmp_path: Path, key: Key, other_key: Key) -> None:
    secret_file = tmp_path / "db.yaml"
    secret_file.write_bytes(PLAIN_YAML)
    secret_file.chmod(0o640)
    run = cli(
        "secrets",
        "encrypt",
        secret_file,
        "--age",
        f"{key.recipient}, {other_key.recipient}",
        "--encrypted-regex",
        "^(password|port)$",
        check=0,
    )
    assert "for 2 age recipient(s)" in run.stderr
    encrypted = secret_file.read_bytes()
    assert SECRET.encode() not in encrypted
    assert secret_file.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".db.yaml")] == []
    assert decrypt(encrypted, "db.yaml", key.identities()) == PLAIN_TREE
    out = cli("secrets", "decrypt", secret_file, "--age-key-file", other_key.file, check=0)
    assert yaml.safe_load(out.stdout)["db"]["password"] == SECRET
    assert out.stderr == ""  # no terminal, no warning


def test_cli_decrypt_reads_sops_age_key_file(
    fixture_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOPS_AGE_KEY_FILE", str(fixture_dir / "age.key"))
    out = cli("secrets", "decrypt", fixture_dir / "age.yaml", check=0)
    assert yaml.safe_load(out.stdout) == FIXTURE_PLAIN


def test_cli_decrypt_warns_on_a_terminal(tmp_path: Path, key: Key) -> None:
    secret_file = tmp_path / "s.json"
    secret_file.write_bytes(
        encrypt(('{"password": "' + SECRET + '"}').encode(), "s.json", [key.recipient])
    )
    leader, follower = pty.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "setpoint", "secrets", "decrypt", str(secret_file)],
            stdout=follower,
            stderr=subprocess.PIPE,
            env={**os.environ, "SOPS_AGE_KEY_FILE": str(key.file)},
            timeout=60,
            check=False,
        )
        os.close(follower)
        follower = -1
        shown = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the terminal's other side is closed and drained
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)
    assert proc.returncode == 0
    assert b"warning: printing decrypted secrets to the terminal" in proc.stderr
    assert SECRET.encode() in shown


def test_cli_errors_name_the_file_and_exit_1(tmp_path: Path, key: Key, other_key: Key) -> None:
    secret_file = tmp_path / "db.yaml"
    secret_file.write_bytes(encrypt(PLAIN_YAML, "db.yaml", [key.recipient]))
    out = cli("secrets", "decrypt", secret_file, "--age-key-file", other_key.file, check=1)
    assert out.stderr.startswith(f"error: {secret_file}: none of the agent's age identities")
    assert SECRET not in out.stderr + out.stdout and "AGE-SECRET-KEY" not in out.stderr
    plain = tmp_path / "plain.yaml"
    plain.write_bytes(PLAIN_YAML)
    out = cli("secrets", "encrypt", plain, "--age", "age1nope", check=1)
    assert "not an age X25519 recipient" in out.stderr
    assert plain.read_bytes() == PLAIN_YAML  # left untouched
