"""README.md (and docs/usage.md): every command of the project's scripts in their bash blocks parses
with that script's own parser (nothing runs), the set-up commands are the ones .ci/run runs, and the
README stays short."""
import importlib
import re
import shlex
from pathlib import Path

import pytest

import tabular
import utils

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / 'README.md'
USAGE = ROOT / 'docs' / 'usage.md'
CI = ROOT / '.ci' / 'run'
SCRIPTS = ('search', 'derive', 'train', 'score', 'stability', 'compress', 'bench', 'measure', 'compare')
MAX_LINES = 260


def bash_blocks(text):
    return re.findall(r'^```bash\n(.*?)^```', text, flags=re.S | re.M)


def commands(text):
    """Each command of the text's bash blocks as a list of words: continuation lines joined, comments
    dropped, leading environment assignments, `nice -n N` and `time` left out."""
    out = []
    for block in bash_blocks(text):
        for line in block.replace('\\\n', ' ').splitlines():
            words = shlex.split(line, comments=True)
            while words and (re.fullmatch(r'[A-Za-z_][A-Za-z0-9_]*=\S*', words[0]) or words[0] in ('time', 'env', 'nice')):
                words = words[3:] if words[:2] == ['nice', '-n'] else words[1:]
            if words:
                out.append(words)
    return out


def ci_commands():
    return [shlex.split(line) for line in CI.read_text().splitlines()
            if line.strip() and not line.lstrip().startswith('#') and line.split()[0] not in ('set', 'cd')]


def script_call(words):
    """(script name, its arguments) for `python[3] X.py ...` and `torchrun [opts] X.py ...`, else None."""
    if words[0] in ('python', 'python3') and len(words) > 1 and words[1].endswith('.py'):
        return words[1][:-3], words[2:]
    if words[0] == 'torchrun':
        at = next(i for i, w in enumerate(words) if w.endswith('.py'))
        return words[at][:-3], words[at + 1:]
    return None


class _Parsed(Exception):
    pass


def parser_of(name, monkeypatch):
    """The script's argparse parser: build_parser() where the script has one; otherwise the parser its
    main(argv) builds, caught at its first parse_args call, before main does anything else."""
    module = importlib.import_module(name)
    if hasattr(module, 'build_parser'):
        return module, module.build_parser()
    seen = []

    def catch(self, *args, **kwargs):
        seen.append(self)
        raise _Parsed

    with monkeypatch.context() as m:
        m.setattr(utils.Parser, 'parse_args', catch)
        with pytest.raises(_Parsed):
            module.main([])
    return module, seen[0]


def placeholders(tmp_path):
    """Real paths for the README's placeholders, for the checks that need a file to exist."""
    data = tmp_path / 'data'
    (data / 'cifar-10-batches-py').mkdir(parents=True, exist_ok=True)
    run = tmp_path / 'run'
    run.mkdir(exist_ok=True)
    (run / 'genotype.json').write_text('{}\n')
    table = tmp_path / 'table.csv'
    table.write_text('arch,cifar100_test_acc\n')
    return {'DATA': str(data), 'RUN': str(run), 'TABLE.csv': str(table)}


def substitute(args, names):
    pattern = re.compile('|'.join(sorted(map(re.escape, names), key=len, reverse=True)))
    return [pattern.sub(lambda m: names[m.group(0)], a) if not a.startswith('-') else a for a in args]


def check_command(words, tmp_path, monkeypatch):
    """Parse one README command with its script's parser; a UserError says what is wrong."""
    name, args = script_call(words)
    if name not in SCRIPTS:
        raise utils.UserError(f'{name}.py is not one of the project\'s scripts')
    if name == 'search' and importlib.import_module('search').method_of(args) in tabular.METHODS:
        name = 'tabular'                # search.py hands sample-based methods to tabular.py
    module, parser = parser_of(name, monkeypatch)
    args = substitute(args, placeholders(tmp_path))
    parsed = parser.parse_args(args)
    if name == 'search' and not parsed.resume:
        # Beyond the flags' names and types: the rules a new search checks before it reads any data.
        module.space_defaults(parsed)
        module.check_args(parsed)
    return parsed


README_TEXT = README.read_text()
SCRIPT_COMMANDS = [w for w in commands(README_TEXT) if script_call(w)]
USAGE_COMMANDS = [w for w in commands(USAGE.read_text()) if script_call(w)]


def test_readme_has_commands_of_every_script():
    assert {script_call(w)[0] for w in SCRIPT_COMMANDS} >= set(SCRIPTS)


@pytest.mark.parametrize('words', SCRIPT_COMMANDS, ids=[' '.join(w)[:80] for w in SCRIPT_COMMANDS])
def test_readme_command_parses(words, tmp_path, monkeypatch):
    check_command(words, tmp_path, monkeypatch)


def test_usage_commands_parse(tmp_path, monkeypatch):
    assert USAGE_COMMANDS
    for words in USAGE_COMMANDS:
        check_command(words, tmp_path, monkeypatch)


@pytest.mark.parametrize('words', [
    ['python', 'search.py', '--data', 'DATA', '--no_such_flag'],
    ['python', 'derive.py', 'RUN', '--top', '2'],                  # no abbreviations of --topk
    ['python', 'train.py', '--arch'],                              # a flag without its value
    ['python', 'stability.py', '--gpu', '0', 'runs/s0'],           # parsed inside main(argv)
    ['python', 'bench.py', '--quick', '--layers', '3'],            # parsed inside main(argv)
    ['python', 'search.py', '--warmup_portion', '0'],              # a search's own rule
    ['python', 'nosuch.py'],
])
def test_a_wrong_command_is_caught(words, tmp_path, monkeypatch):
    with pytest.raises(utils.UserError):
        check_command(words, tmp_path, monkeypatch)


def test_setup_commands_are_what_ci_runs():
    ci = ci_commands()
    ci_test = next(w for w in ci if 'pytest' in w)
    ci_install = next(w for w in ci if 'pip' in w)
    readme = commands(README_TEXT)
    tests = [w for w in readme if 'pytest' in w]
    installs = [w for w in readme if 'pip' in w]
    assert tests and all(w == ci_test for w in tests), (tests, ci_test)
    # The README's install is .ci/run's without -q, so that a newcomer sees the download progress.
    assert installs and all(w == [a for a in ci_install if a != '-q'] for w in installs), (installs, ci_install)


def test_ci_test_command_appears_verbatim():
    line = next(line.strip() for line in CI.read_text().splitlines() if 'pytest' in line)
    assert any(line in block.splitlines() for block in bash_blocks(README_TEXT)), line


def test_readme_is_short():
    n = len(README_TEXT.splitlines())
    assert n <= MAX_LINES, f'README.md has {n} lines; the lab notebook belongs in docs/'


def test_readme_links_exist():
    for target in re.findall(r'\]\(([^)#]+)(?:#[^)]*)?\)', README_TEXT):
        if not target.startswith('http'):
            assert (ROOT / target).exists(), target
