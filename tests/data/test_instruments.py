"""The instrument corpus (sslam.data.instruments): the tones corpus's data contract, rendered from the soundfont
that pretty_midi ships; deterministic, dry, never silent, and every class a family of programs."""
from __future__ import annotations

import hashlib
import io
import json

import mido
import numpy as np
import pytest
import soundfile
import yaml

from data_helpers import folder_digest
from sslam.audio.front_end import load_raw_fbank
from sslam.cli import main
from sslam.runtime.configuration import from_dict
from sslam.data import instruments
from sslam.data.manifest import read_manifest
from sslam.data.synthetic import SET_NAMES, SyntheticConfig, generate_corpus, generate_set, num_classes, set_sizes
from sslam.runtime.errors import ConfigError, SslamError

# Half-second clips and a handful of each: the whole corpus renders in a few seconds.
TINY = dict(corpus="instruments", clip_seconds=0.5, pretrain_clips=4, mono_clips_per_class=2, mono_folds=2,
            poly_train_clips=4, poly_test_clips=6, poly_events=(1, 3), polyphony_clips=6, polyphony_max_events=3,
            odd_format_every=4)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """{set name: manifest path} of the tiny instrument corpus (poly's test split binned by polyphony)."""
    return generate_corpus(SyntheticConfig(**TINY, poly_test_by_polyphony=True), tmp_path_factory.mktemp("inst"))


def midi_messages(data: bytes) -> list[mido.Message]:
    return [message for message in mido.MidiFile(file=io.BytesIO(data)) if not message.is_meta]


def test_fifteen_classes_fourteen_instrument_families_and_the_drum_kits():
    assert len(instruments.FAMILIES) == num_classes(SyntheticConfig(corpus="instruments")) == 15
    assert len(set(instruments.CLASS_IDS)) == 15
    melodic = [program for family in instruments.FAMILIES for program in family.programs]
    assert len(melodic) == len(set(melodic)) == 14 * 8     # every program in exactly one family
    assert not set(melodic) & (set(range(96, 104)) | set(range(120, 128)))   # the two effects families: out
    assert [family.label_id for family in instruments.FAMILIES if family.drums] == ["drums"]
    assert num_classes(SyntheticConfig()) == 14              # the tones corpus is unchanged


def test_sets_follow_the_synthetic_contract(corpus):
    assert set(corpus) == set(SET_NAMES)
    pretrain, mono, poly, polyphony = (read_manifest(corpus[name]) for name in SET_NAMES)
    for manifest in (pretrain, mono, poly, polyphony):
        assert manifest.classes == list(instruments.CLASS_IDS)
    assert len(pretrain) == TINY["pretrain_clips"] and set(pretrain.table["split"]) == {"unlabeled"}
    assert (pretrain.table["labels"] == "").all()

    assert len(mono) == TINY["mono_clips_per_class"] * 15
    assert set(mono.table["labels"].value_counts()) == {TINY["mono_clips_per_class"]}
    assert sorted(set(mono.table["fold"])) == [1, 2]
    assert all(len(set(mono.table.loc[mono.table["fold"] == fold, "labels"])) == 15 for fold in (1, 2))

    train, test = poly.table["split"] == "train", poly.table["split"] == "test"
    assert train.sum() == TINY["poly_train_clips"] and test.sum() == TINY["poly_test_clips"]
    counts = [len(poly.labels_of(row)) for row in range(len(poly))]
    assert all(1 <= count <= 3 for count in counts)
    assert list(poly.table["polyphony"]) == counts          # a clip's families are distinct: one label per part
    assert sorted(poly.table.loc[test, "polyphony"]) == [1, 1, 2, 2, 3, 3]

    assert list(polyphony.table["polyphony"]) == [len(polyphony.labels_of(r)) for r in range(len(polyphony))]
    assert set(polyphony.table["split"]) == {"test"}


def test_set_sizes_are_the_rendered_manifests_split_counts(corpus):
    """What `sslam plan` reads before the corpus exists: the instrument corpus's own 15 classes, not 14."""
    config = SyntheticConfig(**TINY, poly_test_by_polyphony=True)
    for name in SET_NAMES:
        counts = read_manifest(corpus[name]).table["split"].value_counts()
        assert set_sizes(name, config) == {str(split): int(count) for split, count in counts.items()}
    assert set_sizes("mono", config) == {"train": TINY["mono_clips_per_class"] * 15}


def test_files_are_16_bit_with_the_renderers_own_format_among_them(corpus):
    manifest = read_manifest(corpus["mono"])
    formats = set()
    for row in range(len(manifest)):
        info = soundfile.info(str(manifest.audio_path(row)))
        assert info.subtype == "PCM_16" and info.samplerate == manifest.table.at[row, "sample_rate"]
        assert abs(info.duration - TINY["clip_seconds"]) < 1e-3
        formats.add((info.samplerate, info.channels))
    assert formats == {(16000, 1), (16000, 2), (instruments.RENDER_RATE, 2)}


def test_every_clip_is_audible_and_goes_through_the_front_end(corpus):
    for name in SET_NAMES:
        manifest = read_manifest(corpus[name])
        for row in range(len(manifest)):
            audio, _ = soundfile.read(str(manifest.audio_path(row)), always_2d=True)
            peak_dbfs = 20 * np.log10(np.abs(audio).max())
            assert -40.0 < peak_dbfs <= 20 * np.log10(0.95) + 0.01, (name, row, peak_dbfs)
            fbank = load_raw_fbank(manifest.audio_path(row))      # raises on silent or broken audio
            assert np.isfinite(fbank.numpy()).all()


def test_same_seed_same_bytes_other_seed_other_audio(tmp_path):
    config = SyntheticConfig(**dict(TINY, mono_clips_per_class=1))
    first, again = generate_set("mono", config, tmp_path / "a"), generate_set("mono", config, tmp_path / "b")
    assert folder_digest(first.parent) == folder_digest(again.parent)
    other = generate_set("mono", SyntheticConfig(**dict(TINY, mono_clips_per_class=1, seed=1)), tmp_path / "c")
    assert (first.parent / "audio" / "mono-00000.wav").read_bytes() != (other.parent / "audio" / "mono-00000.wav").read_bytes()


def test_parts_are_dry_and_play_a_program_of_their_family_in_the_shared_register():
    seconds = 2.0
    for index, family in enumerate(instruments.FAMILIES):
        for draw in range(3):
            messages = midi_messages(instruments.part_midi(family, np.random.default_rng([index, draw]), seconds, 100.0))
            controls = {(m.control, m.value) for m in messages if m.type == "control_change" and m.time == 0}
            assert {(91, 0), (93, 0)} <= controls                     # no reverb, no chorus send
            channel = {m.channel for m in messages if hasattr(m, "channel")}
            assert channel == {instruments.DRUM_CHANNEL if family.drums else 0}
            programs = [m.program for m in messages if m.type == "program_change"]
            assert len(programs) == 1
            assert programs[0] in (instruments.DRUM_KITS if family.drums else family.programs)
            onsets, now, keys, silenced = [], 0.0, [], []
            for message in messages:
                now += message.time                                   # seconds (mido iterates in seconds)
                if message.type == "note_on" and message.velocity > 0:
                    onsets.append(now)
                    keys.append(message.note)
                if message.type == "control_change" and message.control == 120:
                    silenced.append(now)
            assert onsets and min(onsets) <= 0.25 * seconds + 1e-3 and max(onsets) < seconds
            if not family.drums:
                assert instruments.NOTE_RANGE[0] <= min(keys) and max(keys) <= instruments.NOTE_RANGE[1]
            assert silenced == [pytest.approx(seconds, abs=2e-3)]     # all sound off at the clip's end
            assert now >= seconds                                     # and the file lasts the whole clip


def test_a_rendered_part_has_peak_one_and_a_family_its_own_timbre():
    """Two programs of different families on the same notes differ in their spectra far more than the same
    program twice (the renderer is deterministic)."""
    rng = lambda: np.random.default_rng(7)
    piano = instruments.render_part(instruments.FAMILIES[0], rng(), 1.0, 120.0)
    again = instruments.render_part(instruments.FAMILIES[0], rng(), 1.0, 120.0)
    organ = instruments.render_part(instruments.FAMILIES[2], rng(), 1.0, 120.0)
    assert piano.shape == (instruments.RENDER_RATE, 2) and np.abs(piano).max() == pytest.approx(1.0)
    np.testing.assert_array_equal(piano, again)
    spectrum = lambda wave: np.log(np.abs(np.fft.rfft(wave.mean(axis=1)))[:20000] + 1e-6)
    assert np.abs(spectrum(piano) - spectrum(organ)).mean() > 0.5


def test_a_phrase_that_stays_silent_is_an_error(monkeypatch):
    monkeypatch.setattr(instruments, "render_midi", lambda midi: np.zeros((100, 2)))
    with pytest.raises(SslamError, match="rendered silent"):
        instruments.render_part(instruments.FAMILIES[3], np.random.default_rng(0), 0.5, 120.0)


def test_without_pretty_midi_the_corpus_says_what_to_install(monkeypatch):
    monkeypatch.setattr(instruments.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SslamError, match="pretty_midi"):
        instruments.soundfont_path()


@pytest.mark.parametrize("override, key", [
    ({"poly_events": [1, 16]}, "synthetic.poly_events"),
    ({"pretrain_events": [2, 20]}, "synthetic.pretrain_events"),
    ({"polyphony_max_events": 16}, "synthetic.polyphony_max_events"),
    ({"corpus": "strings"}, "synthetic.corpus"),
])
def test_limits_of_the_instrument_corpus_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        from_dict(SyntheticConfig, {"corpus": "instruments", **override}, where="synthetic")


def test_sslam_synth_records_the_soundfont_it_rendered(tmp_path, capsys):
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump({"synthetic": dict(TINY, poly_events=[1, 3], mono_clips_per_class=1)}))
    assert main(["synth", "--config", str(config), "--out", str(tmp_path / "out"), "--sets", "mono"]) == 0
    source = json.loads((tmp_path / "out" / "instruments.json").read_text())
    assert source["soundfont"] == "TimGM6mb.sf2" and source["render_rate"] == instruments.RENDER_RATE
    assert source["soundfont_sha256"] == hashlib.sha256(instruments.soundfont_path().read_bytes()).hexdigest()
    assert source["classes"] == list(instruments.CLASS_IDS)
    assert (tmp_path / "out" / "mono" / "manifest.tsv").is_file() and "mono:" in capsys.readouterr().out


def test_a_part_renders_the_same_alone_and_among_others():
    """Parts are rendered many to a file; on windows of whole 64-sample blocks, each sounds as it does alone
    (up to the renderer's 16-bit rounding: its voices are summed in another order)."""
    parts = [instruments.part_events(instruments.FAMILIES[index], np.random.default_rng(index), 0.5, 110.0)
             for index in (0, 5, 14, 9)]
    together = instruments.render_parts(parts, 0.5)
    for part, wave in zip(parts, together):
        assert np.abs(wave).max() > 1e-3
        np.testing.assert_allclose(instruments.render_parts([part], 0.5)[0], wave, rtol=0, atol=4 * 2.0 ** -15)


def test_a_clip_does_not_change_when_its_set_is_resized(tmp_path):
    small = generate_set("mono", SyntheticConfig(**dict(TINY, mono_clips_per_class=1)), tmp_path / "small")
    large = generate_set("mono", SyntheticConfig(**TINY), tmp_path / "large")
    for clip in ("mono-00000.wav", "mono-00007.wav", "mono-00014.wav"):   # rendered among other parts
        alone, _ = soundfile.read(str(small.parent / "audio" / clip))
        among, _ = soundfile.read(str(large.parent / "audio" / clip))
        assert np.abs(alone).max() > 1e-3
        np.testing.assert_allclose(alone, among, rtol=0, atol=4 * 2.0 ** -15)
