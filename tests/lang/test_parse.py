"""Parse stage: spec text -> ast.Network; the SYNTAX_ERRORS table matches its own examples."""

from __future__ import annotations


import pytest
from lark.exceptions import UnexpectedInput

from lipdsl.lang import ast
from lipdsl.errors import LipdslError, ParseError, ShapeError, SpecError
from lipdsl.lang.parse import _parser, parse
from lipdsl.lang.syntax_errors import SYNTAX_ERRORS, match_syntax_error
from lipdsl.lang.source import Source, Span
from repo_paths import ROOT

GOOD = sorted((ROOT / "specs").glob("*.lip"))


def p(text: str) -> ast.Network:
    return parse(Source("<string>", text))


@pytest.mark.parametrize("spec", GOOD, ids=lambda s: s.name)
def test_good_specs_parse(spec):
    net = parse(Source.read(spec))
    assert net.layers
    assert all(layer.span.line >= 1 for layer in net.layers)


def test_ecg_ast():
    net = parse(Source.read(ROOT / "specs" / "ecg.lip"))
    assert net.name == "ecg"
    assert (net.input.channels.value, net.input.length.value, net.input.any_length) == (1, 128, False)
    kinds = [type(layer).__name__ for layer in net.layers]
    assert kinds == [
        "Conv1d",
        "Activation",
        "Pool",
        "Conv1d",
        "Activation",
        "Pool",
        "Flatten",
        "Dense",
        "Activation",
        "Dense",
    ]
    c1 = net.layers[0]
    assert c1.name == "c1" and c1.c_in.value == 1 and c1.c_out.value == 2
    opts = {o.key: o.value for o in c1.options}
    assert opts["kernel"].value == 3 and opts["padding"] == "causal"
    assert opts["weight"] == ast.TensorRef(None, "conv1.weight", opts["weight"].span)
    assert isinstance(net.body[1], ast.Weights) and net.body[1].path == "weights/ecg_CNN_23_03_08_11_52.npz"
    # plain numbers stay Python ints: no sympy for specs without arithmetic
    assert isinstance(c1.c_in.value, int) and c1.c_in.is_number


def test_spans_are_one_based_and_end_exclusive():
    net = p("input 1 x 8\nconv1d c1: 1 -> 2, kernel 3, weight w\n")
    conv = net.layers[0]
    assert conv.span == Span(2, 1, 2, 38)  # 37 characters
    assert conv.c_in.span == Span(2, 12, 2, 13)


def test_statement_forms():
    net = p(
        'network n\ninput 3 x *\nweights "w.npz"\nlet a = 1/8\n'
        'conv1d 3 -> 4, kernel 3, stride 2, dilation 2, padding 1, weight "o.npz":x.0.w, bias "b.npy"\n'
        "maxpool p: 3, stride 1\navgpool kernel 2\nglobal_avgpool g\nflatten\n"
        "leaky_relu(0.1) lr: slope [0, 1]\nswish s slope [-0.1, 1.1]\n"
        "dense 4 -> 2, weight [[1, 2, 3, 4], [a, 0, 0, 0]]\n"
    )
    assert net.input.any_length and net.input.length is None
    conv, maxp, avgp, gap, flat, lrelu, swish, dense = net.layers
    opts = {o.key: o.value for o in conv.options}
    assert conv.name is None
    assert opts["weight"] == ast.TensorRef("o.npz", "x.0.w", opts["weight"].span)
    assert opts["bias"] == ast.TensorRef("b.npy", None, opts["bias"].span)
    assert opts["padding"].value == 1
    assert (maxp.op, maxp.name, maxp.kernel.value) == ("max", "p", 3)
    assert avgp.kernel is None and avgp.options[0].key == "kernel"
    assert gap.name == "g" and flat.name is None
    assert (lrelu.function, lrelu.parameter.value, lrelu.name) == ("leaky_relu", 0.1, "lr")
    assert swish.function == "swish" and swish.name == "s" and swish.options[0].key == "slope"
    w = dense.options[0].value
    assert isinstance(w, ast.Tensor) and len(w.items) == 2 and len(w.items[1].items) == 4


def test_flat_input_and_times_sign():
    assert p("input 784\nrelu\n").input.flat
    net = p("input 2×16\nrelu\n")
    assert (net.input.channels.value, net.input.length.value) == (2, 16)
    assert p("input 2x16\nrelu\n").input.length.value == 16


def test_expressions_are_sympy_built_from_the_tree():
    import sympy

    net = p("input 2\nlet a = -2^2 + 2^3^2 - 2**-1 + 0.1 * (3 - 1) / 4 + sqrt(2) * pi + e\nrelu\n")
    value = net.body[1].value.value
    want = -4 + 512 - sympy.Rational(1, 2) + sympy.Rational(1, 20) + sympy.sqrt(2) * sympy.pi + sympy.E
    assert sympy.simplify(value - want) == 0
    assert p("input 2\nlet b = 1/8\nrelu\n").body[1].value.value == sympy.Rational(1, 8)


def test_names_in_expressions_keep_their_spans():
    net = p("input 2\nlet b = 2 * a + foo(c)\nrelu\n")
    names = net.body[1].value.names
    assert [(n.id, n.call) for n in names] == [("a", False), ("foo", True), ("c", False)]
    assert names[0].span == Span(2, 13, 2, 14)


def test_negative_literal_stays_plain():
    e = p("input 2\nlet a = -0.5\nrelu\n").body[1].value
    assert e.is_number and e.value == -0.5


def test_continuation_lines_comments_crlf_and_no_final_newline():
    text = (
        "# header\r\n\r\nnetwork n   # name\r\ninput 2\r\n"
        "dense d: 2 -> 2,\r\n   weight [[1, 0],  # row 1\r\n           [0, 1]],\r\n   bias [0, 0]\r\nrelu"
    )
    net = p(text)
    assert [type(x).__name__ for x in net.layers] == ["Dense", "Activation"]
    assert [o.key for o in net.layers[0].options] == ["weight", "bias"]


@pytest.mark.parametrize("ending", ["\n", "\r\n", "\r"])
@pytest.mark.parametrize("bom", ["", "\ufeff"])
def test_line_endings_and_a_byte_order_mark_read_alike(ending, bom):
    """Old Mac files (a lone \r) have lines as well, and a UTF-8 byte-order mark (Notepad) is not a character
    of the spec: the same network, and an error at the same line and column, showing that line."""
    good = ["network t", "input 2 x 8", "residual r", "  relu", "end"]
    net = p(bom + ending.join(good) + ending)
    assert net.name == "t" and net.name_span == Span(1, 9, 1, 10)
    assert net.layers[0].end_span.line == 5
    bad = ["network t", "input 2 x 8", "relu $"]
    text = bom + ending.join(bad) + ending
    with pytest.raises(ParseError) as err:
        p(text)
    assert (err.value.span.line, err.value.span.col) == (3, 6)
    assert "    3 | relu $\n      |      ^" in err.value.render(Source("x.lip", text))


def test_keywords_are_not_names_but_x_is():
    net = p("input 2\nlet x = 3\nrelu\n")
    assert net.body[1].name == "x"


@pytest.mark.parametrize("text, what", [
    ("input 2 x 8\nresidual end\n  relu\nend\n", "a residual block"),
    ("input 2 x 8\nresidual shortcut:\n  relu\nend\n", "a residual block"),
    ("input 2 x 8\nbatchnorm eps: 2, weights bn\n", "a layer"),
    ("input 2 x 8\nconv1d kernel: 2 -> 2, kernel 1, weight w\n", "a layer"),
    ("input 2 x 8\ndense weight: 2 -> 2, weight w\n", "a layer"),
    ("input 2 x 8\navgpool valid: 2\n", "a layer"),
    ("input 2 x 8\nmaxpool causal: 2\n", "a layer"),
    ("input 2 x 8\nflatten valid\n", "a layer"),
    ("input 2 x 8\nglobal_avgpool same\n", "a layer"),
    ("input 2 x 8\nrelu end\n", "a layer"),
    ("input 2 x 8\nswish input: slope [0, 1]\n", "a layer"),
    ("input 2 x 8\nlet eps = 1e-3\n", "a constant"),  # the fast let reader leaves it to Lark
    ("input 2 x 8\nlet end = sqrt(2)\n", "a constant"),
    ("network end\ninput 2 x 8\nrelu\n", "the network"),
    # an option keyword after the kind is lexed as the option: refused as a name when nothing follows it
    ("input 2\nrelu eps\n", "a layer"),
    ("input 2\nrelu eps:\n", "a layer"),
    ("input 2\ntanh running_var\n", "a layer"),
    ("input 2\nrelu kernel\n", "a layer"),
    ("input 2\nleaky_relu(0.1) weights\n", "a layer"),
    ("input 2 x 8\nflatten weights\n", "a layer"),
    ("input 2 x 8\navgpool eps\n", "a layer"),
    ("input 2 x 8\navgpool kernel:\n", "a layer"),
    ("input 2 x 8\nglobal_avgpool bias", "a layer"),
])
def test_keywords_cannot_name_anything(text, what):
    """The contextual lexer reads a keyword as a NAME where the keyword cannot come next ('residual end'):
    the error names the word and points at it."""
    with pytest.raises(ParseError) as err:
        p(text)
    line = 1 if what == "the network" else 2
    source_line = text.splitlines()[line - 1]
    word = source_line.split()[1].rstrip(":")
    assert err.value.message == f"{word!r} is a keyword and cannot name {what}"
    assert err.value.span.line == line
    assert source_line[err.value.span.col - 1:err.value.span.end_col - 1] == word
    assert f"'{word}1'" in err.value.hint


@pytest.mark.parametrize("text, message", [
    ("input 2\nrelu slope\n", "'slope' needs two bounds"),
    ("input 2 x 8\navgpool stride\n", "missing value after the option's keyword"),
    ("input 2\nrelu r1 eps\n", "missing value after the option's keyword"),
    ("input 2\nbatchnorm 2, eps\n", "missing value after the option's keyword"),
    ("input 2\nbatchnorm 2, weights\n", "expected a tensor"),
])
def test_an_option_without_its_value_is_not_taken_for_a_name(text, message):
    """An option the layer takes, or one after its name or sizes, is an option left without its value."""
    with pytest.raises(ParseError) as err:
        p(text)
    assert err.value.message.startswith(message)


@pytest.mark.parametrize("text, example", [
    ("batchnorm eps\n", "batchnorm 16, eps 1e-5"),  # (was: unknown name 'eps', from check)
    ("batchnorm running_mean\n", "batchnorm 16, running_mean bn1.running_mean"),
    ("batchnorm weights\n", "batchnorm 16, weights bn1"),
    ("batchnorm eps 1e-5\n", "batchnorm 16, eps 1e-5"),
    ("conv1d kernel\n", "conv1d c1: 1 -> 2, kernel 3"),
    ("conv1d kernel 3\n", "conv1d c1: 1 -> 2, kernel 3"),
    ("conv1d kernel -> 2\n", "conv1d c1: 1 -> 2, kernel 3"),
    ("dense weight w\n", "dense f1: 96 -> 60, weight fc1.weight"),
    ("dense bias\n", "dense f1: 96 -> 60, bias fc1.bias"),
])
def test_an_option_where_a_layers_sizes_go_is_an_option_that_needs_a_value(text, example):
    with pytest.raises(ParseError) as err:
        p("input 2 x 8\n" + text)
    word = text.split()[1]
    assert err.value.message.startswith(f"{word!r} is an option of ")
    assert err.value.message.endswith(f"and needs a value, as in '{example}'")
    col = text.index(word) + 1
    assert (err.value.span.line, err.value.span.col, err.value.span.end_col) == (2, col, col + len(word))


@pytest.mark.parametrize("text, takes", [
    ("swish eps slope [0, 1]\n", "an activation (its options: slope)"),  # (was: unexpected '[0,1]')
    ("swish weight slope [0, 1]\n", "an activation (its options: slope)"),
    ("dense slope\n", "dense (its options: weight, bias)"),
    ("conv1d eps 1 -> 2\n", "conv1d (its options: kernel"),
])
def test_a_keyword_that_is_not_the_layers_option_after_its_kind_is_refused_as_its_name(text, takes):
    with pytest.raises(ParseError) as err:
        p("input 2 x 8\n" + text)
    word = text.split()[1]
    assert err.value.message == f"{word!r} is a keyword and cannot name a layer"
    assert err.value.span.col == text.index(word) + 1
    assert f"{word!r} is not an option of {takes}" in err.value.hint


def test_unmatched_errors_read_unexpected_end_of_the_line(monkeypatch):
    """The generic message is 'unexpected end of the line', not 'unexpected the end of the line'."""
    from lipdsl.lang import syntax_errors

    monkeypatch.setattr(syntax_errors, "match_syntax_error", lambda exc: None)  # no message in the table
    with pytest.raises(ParseError) as err:
        p("input 2\nconv1d c: 1 -> 2, kernel 3 +\n")
    assert err.value.message == "unexpected end of the line"
    assert err.value.hint.startswith("expected one of: ")


def test_a_bad_character_inside_closed_brackets_is_named_not_an_unclosed_bracket():
    with pytest.raises(ParseError) as err:
        p("input 2\ndense d: 2 -> 2,\n    weight [[1, 0],\n            [0, $]]\n")
    assert err.value.message == "unexpected character '$'"
    assert (err.value.span.line, err.value.span.col) == (4, 17)


@pytest.mark.parametrize("text, message, col", [
    ("input 2\nweights 'a.npz'\n", "file names are written in double quotes, as in 'weights \"a.npz\"'", 9),
    ("input 2\ndense 2 -> 2, weight 'w.npy'\n", 'file names are written in double quotes, as in "w.npy"', 22),
    ("input 2\nweights 'a.npz\n", "file names are written in double quotes, as in 'weights \"net.npz\"'", 9),
])
def test_a_file_name_in_single_quotes_is_told_to_use_double_quotes(text, message, col):
    """(Was "a file name needs a closing '\"'", as if a double quote had been opened.)"""
    with pytest.raises(ParseError) as err:
        p(text)
    assert err.value.message == message
    assert (err.value.span.line, err.value.span.col, err.value.span.end_col) == (2, col, col + 1)


def test_option_words_are_every_option_of_ast_options_and_batchnorms_are_suggested():
    from lipdsl.lang.syntax_errors import OPTION_WORDS

    assert set(OPTION_WORDS) == {word for words in ast.OPTIONS.values() for word in words}
    with pytest.raises(ParseError) as err:
        p("input 2\nbatchnorm 2, runing_mean bn.running_mean\n")
    assert "running_var or eps" in err.value.message
    assert err.value.hint.startswith("did you mean 'running_mean'?")


def test_keywords_are_the_grammars_quoted_words_and_the_documented_list():
    from lipdsl.lang.parse import keywords
    from lipdsl.lang.syntax_errors import LAYER_KEYWORDS, OPTION_WORDS

    words = keywords()
    assert {"network", "conv1d", "residual", "shortcut", "end", "kernel", "eps", "valid"} <= words
    assert "x" not in words and "relu" not in words
    assert set(LAYER_KEYWORDS) | set(OPTION_WORDS) <= words
    documented = (ROOT / "docs" / "language.md").read_text(encoding="utf-8")
    listed = documented.split("- Keywords (`", 1)[1].split("`)", 1)[0].split()
    assert sorted(listed) == sorted(words)


def test_structure_errors():
    with pytest.raises(ParseError, match="one 'input' line"):
        p("input 2\ninput 3\n")
    with pytest.raises(ParseError, match="one 'network' line"):
        p("network a\nnetwork b\ninput 2\nrelu\n")
    with pytest.raises(ParseError, match="no 'input' line"):
        p("network a\n")
    with pytest.raises(ParseError, match="before the 'input' line"):
        p("relu\ninput 2\n")


@pytest.mark.parametrize("label,example", [(label, ex) for label, exs in SYNTAX_ERRORS for ex in exs])
def test_syntax_error_table(label, example):
    """Every example is a syntax error, and is translated back to its own message."""
    with pytest.raises(UnexpectedInput) as info:
        _parser().parse(example)
    assert match_syntax_error(info.value) == label
    with pytest.raises(ParseError) as err:
        p(example)
    assert err.value.message.startswith(label) or err.value.message.startswith("unexpected character")
    # the span is Lark's position of the offending token, inside the example's text
    span = err.value.span
    assert span is not None and 1 <= span.line <= example.count("\n") + 1 and span.col >= 1
    assert (span.line, span.col) == (info.value.line, info.value.column)


def test_unmatched_syntax_error_lists_what_was_expected():
    with pytest.raises(ParseError) as err:
        p("input 2\nconv1d c: 1 -> 2, kernel 3 +\n")
    assert err.value.span.line == 2
    assert "found" in err.value.message or err.value.hint


def test_unclosed_bracket_points_at_the_bracket():
    with pytest.raises(ParseError) as err:
        p("input 2\ndense d: 2 -> 1,\n  weight [[1, 2]\n")
    assert "never closed" in err.value.message
    assert (err.value.span.line, err.value.span.col) == (3, 10)


def test_grammar_loads_from_package_or_repo():
    from lipdsl.lang.parse import grammar_text

    assert grammar_text() == (ROOT / "grammar" / "lipdsl.lark").read_text(encoding="utf-8")


# -- fast path for inline tensors of plain numbers (one NUMBERS token) -----------------------------------

@pytest.mark.parametrize("text", [
    "[[1, -2.5e3 ,]]", "[[[1], [2]], [[3], [4]]]", "[]", "[[]]", "[ - 1, + .5, 7., 1E-3 ]",
    "[[1, 2],\n   [3, 4]]", "[[1, 2], [3]]", "[[1], 2]", "[1, 1e400]", "[-0, 0]",
])
def test_numeric_tensors_parse_like_the_general_rule(text):
    """The NUMBERS token gives float64 values equal to the literal; irregular or non-finite tensors fall back
    to the general AST (with spans), which check refuses as before."""
    import numpy as np

    from lipdsl.lang.check import Checker

    fast = parse(Source("<t>", f"input 1\ndense d: 1 -> 1, weight {text}\n")).body[1].options[0].value
    ck = Checker(Source("<t>", ""), False)
    if fast.values is not None:
        assert fast.values.dtype == np.float64 and not fast.values.flags.writeable
        expected = np.array(eval(text.replace("\n", " ")), dtype=float)  # plain Python literals here
        assert fast.values.shape == expected.shape and np.array_equal(fast.values, expected)
    else:  # ragged, mixed or non-finite: the general AST with spans, judged by check as before
        assert fast.items
        error, match = FALLBACK_ERRORS[text]
        with pytest.raises(error, match=match) as info:
            ck.inline(fast, "weight")
        assert info.value.span.line == 2


# the tensors of the test above that the fast path leaves to check, and check's error for each
FALLBACK_ERRORS = {
    "[[1, 2], [3]]": (ShapeError, r"ragged inline tensor: this row has shape \(1,\), the first has \(2,\)"),
    "[[1], 2]": (ShapeError, "mixes numbers and lists at the same depth"),
    "[1, 1e400]": (SpecError, "too large for float64"),
}


def test_one_megabyte_of_inline_weights_parses_and_checks_quickly():
    import time

    import numpy as np

    from lipdsl.lang.load import check_source

    rng = np.random.default_rng(0)
    rows = ",\n ".join(
        "[" + ", ".join(f"{v:.6f}" for v in rng.standard_normal(300)) + "]" for _ in range(300)
    )
    text = f"input 300\ndense d: 300 -> 300, weight [{rows}]\nrelu\n"
    assert len(text) > 900_000
    t0 = time.perf_counter()
    net = check_source(Source("<1mb>", text))
    assert time.perf_counter() - t0 < 3.0  # ~0.3 s on an idle machine; generous for a loaded one
    assert net.layers[0].weight.shape == (300, 300)


def test_a_spec_of_too_many_statements_is_refused_fast():
    """1 MB of 'relu' lines took ~30 s in Lark; a cheap count refuses it first, with a place and a hint."""
    from lipdsl.errors import ParseError
    from lipdsl.lang.parse import MAX_STATEMENTS, parse
    from lipdsl.lang.source import Source

    text = "network big\ninput 1 x 8\n" + "relu\n" * 200_000
    with pytest.raises(ParseError, match=f"more than {MAX_STATEMENTS} statements") as info:
        parse(Source("big.lip", text))
    assert info.value.span.line == MAX_STATEMENTS + 1


# ------------------------------------------------------------------------------ residual blocks, batch norm
def test_residual_block_groups_its_lines():
    net = p("input 2 x 8\nresidual b1:\n  conv1d 2 -> 2, kernel 1, weight w\n  relu\nshortcut\n"
            "  batchnorm 2, weights bn\nend\nrelu\n")
    block, act = net.layers
    assert isinstance(block, ast.Residual) and block.name == "b1"
    assert [type(x).__name__ for x in block.main] == ["Conv1d", "Activation"]
    assert [type(x).__name__ for x in block.shortcut] == ["BatchNorm"]
    assert block.span.line == 2 and block.shortcut_span.line == 5 and block.end_span.line == 7
    assert isinstance(act, ast.Activation)
    identity = p("input 2 x 8\nresidual\n  relu\nend\n").layers[0]
    assert identity.shortcut is None and identity.name is None


def test_batchnorm_options():
    (bn,) = p('input 4\nbatchnorm bn1: 4, weights "f.npz":layer.bn, eps 1e-3\n').layers
    assert isinstance(bn, ast.BatchNorm) and bn.name == "bn1"
    keys = {o.key: o.value for o in bn.options}
    assert keys["weights"].file == "f.npz" and keys["weights"].key == "layer.bn"
    assert keys["eps"].value == 1e-3


@pytest.mark.parametrize("text, message, line", [
    ("input 1 x 8\nresidual a\nresidual b\nrelu\nend\nend\n", "residual blocks do not nest", 3),
    ("input 1 x 8\nresidual a\n  relu\nweights \"w.npz\"\nend\n", "only layers go inside a residual", 4),
    ("input 1 x 8\nresidual a\n  relu\nshortcut\nshortcut\nend\n", "a residual block has one 'shortcut'", 5),
    ("input 1 x 8\nresidual a\nshortcut\n  relu\nend\n", "needs at least one layer on its main path", 2),
    ("input 1 x 8\nrelu\nend\n", "'end' outside a residual block", 3),
    # a misspelled block keyword parses as an activation: the error points at it, not at the block's end
    ("input 1 x 8\nresidul r\n  relu\nend\n", "unknown keyword 'residul' -- did you mean 'residual'?", 2),
    ("input 1 x 8\nResidual r\n  relu\nend\n", "unknown keyword 'Residual' -- did you mean 'residual'?", 2),
    ("input 1 x 8\nresidual r:\n  relu\nEnd\n", "unknown keyword 'End' -- did you mean 'end'?", 4),
])
def test_residual_block_errors(text, message, line):
    with pytest.raises(ParseError) as err:
        p(text)
    assert message in err.value.message and err.value.span.line == line and err.value.hint


# -- issue 17: parse/check time stays bounded -------------------------------------------------------------

@pytest.mark.parametrize("lead", ["", " ", "\f", "\r", " \f\r\t"])
def test_statement_limit_counts_lines_starting_with_any_ignored_whitespace(lead):
    from lipdsl.lang.parse import MAX_STATEMENTS

    text = "input 2\n" + (lead + "relu\n") * (MAX_STATEMENTS + 5)
    with pytest.raises(ParseError, match="more than .* statements"):
        parse(Source("<string>", text))


@pytest.mark.parametrize("expr, function, limit", [
    ("exp(-10^2000)", "exp", "1000"), ("exp(10^2000)", "exp", "1000"), ("tanh(10^500)", "tanh", "1000"),
    ("sin(10^2000)", "sin", "1e+06"), ("cos(-10^100)", "cos", "1e+06"), ("exp(exp(2000))", "exp", "1000"),
    ("exp(a)", "exp", "1000"),
])
def test_let_bombs_are_refused_fast(expr, function, limit):
    """Functions of huge arguments are refused before sympy evaluates them (was 20 s for 8 uses): the error
    is the function's argument bound, at ``let b`` (line 2), not at ``let a`` (10^300 is a fine constant; a
    ``let a = 10^3000`` here used to be refused itself by the 8192-bit power cap, so ``b`` was never read)."""
    import time

    from lipdsl.lang.load import check_source

    uses = ", ".join(["b"] * 8)
    text = f"let a = 10^300\nlet b = {expr}\ninput 8\ndense d: 8 -> 1, weight [[{uses}]]\n"
    t0 = time.perf_counter()
    with pytest.raises((ParseError, SpecError)) as info:
        check_source(Source("<string>", text))
    assert time.perf_counter() - t0 < 2.0
    assert f"the argument of {function} is beyond +-{limit}" in info.value.message
    # the span points at the refused call inside b's expression (the inner exp of exp(exp(2000)))
    line, col = info.value.span.line, info.value.span.col
    assert line == 2 and col > len("let b = ")
    assert text.splitlines()[1][col - 1:].startswith(f"{function}(")


def test_functions_of_moderate_arguments_still_evaluate_exactly():
    from lipdsl.lang.load import check_source

    net = check_source(Source("<string>", "input 2\ndense d: 2 -> 1, weight [[exp(-700), sin(10^5)]]\n"))
    import math

    assert net.layers[0].weight[0, 0] == pytest.approx(math.exp(-700), rel=1e-15)
    assert net.layers[0].weight[0, 1] == pytest.approx(math.sin(1e5), rel=1e-12)


# -- issue 17: misspelled and PyTorch-style keywords ------------------------------------------------------

def _typos(word: str, rng) -> list[str]:
    """Swaps of neighbouring letters, deletions and doublings of one letter, and the capitalised word."""
    out = {word.capitalize(), word.upper()}
    for i in range(len(word) - 1):
        out.add(word[:i] + word[i + 1] + word[i] + word[i + 2:])
    for i in range(len(word)):
        out.add(word[:i] + word[i + 1:])
        out.add(word[:i] + word[i] + word[i:])
    out.discard(word)
    return sorted(out)


LAYER_LINES = {"conv1d": " c: 2 -> 2, kernel 1, weight [[[1], [1]], [[1], [1]]]",
               "dense": " d: 16 -> 1, weight [[1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]]",
               "avgpool": " 2", "maxpool": " 2", "global_avgpool": "", "flatten": "",
               "batchnorm": " 2, running_mean [0, 0], running_var [1, 1]", "residual": " r:\n relu\nend"}


@pytest.mark.parametrize("keyword", sorted(LAYER_LINES))
def test_misspelled_layer_keywords_are_named_with_a_suggestion(keyword):
    """Every one-letter typo of a layer keyword (that is not itself a known word) is an error that names the
    word and suggests a keyword or activation, never a traceback or a silent activation."""
    import numpy as np

    from lipdsl.lang.activations import ACTIVATIONS
    from lipdsl.lang.load import check_source
    from lipdsl.lang.syntax_errors import LAYER_KEYWORDS

    for typo in _typos(keyword, np.random.default_rng(0)):
        if typo in ACTIVATIONS or typo in LAYER_KEYWORDS:
            continue
        text = f"input 2 x 8\n{typo}{LAYER_LINES[keyword]}\n"
        with pytest.raises(LipdslError) as info:
            check_source(Source("<string>", text))
        msg = info.value.message + " " + (info.value.hint or "")
        assert typo in msg, (typo, msg)
        if len(keyword) >= 5:
            assert "did you mean" in msg, (typo, msg)


@pytest.mark.parametrize("word, keyword", [("linear", "dense"), ("Linear", "dense"), ("Conv1d", "conv1d"),
                                           ("MaxPool1d", "maxpool"), ("AvgPool1d", "avgpool"),
                                           ("AdaptiveAvgPool1d", "global_avgpool"), ("Flatten", "flatten"),
                                           ("BatchNorm1d", "batchnorm"), ("batch_norm", "batchnorm")])
def test_pytorch_layer_names_point_to_the_keyword(word, keyword):
    from lipdsl.lang.load import check_source

    for rest in ("", "(4, 2)", " 2", " c: 1 -> 1"):
        with pytest.raises(LipdslError, match=f"unknown layer '{word}' -- did you mean '{keyword}'"):
            check_source(Source("<string>", f"input 2 x 8\n{word}{rest}\n"))


@pytest.mark.parametrize("option, fix", [("kernal", "kernel"), ("kernel_size", "kernel"),
                                         ("strides", "stride"), ("dilations", "dilation"),
                                         ("padd", "padding"), ("wieght", "weight")])
def test_misspelled_options_suggest_the_option(option, fix):
    for sep in (" ", "="):
        with pytest.raises(ParseError) as info:
            p(f"input 1 x 8\nconv1d c: 1 -> 1, {option}{sep}3, weight [[[1]]]\n")
        assert f"did you mean '{fix}'" in info.value.message + (info.value.hint or ""), info.value.message


@pytest.mark.parametrize("seed", range(20))
def test_tensors_of_names_take_the_fast_path_and_mean_the_same(seed):
    """Plain numbers and bare let names (signed, on several lines) are one NAMES token; the weights are those
    of the same tensor written with operators (parsed by the tensor rule), and errors keep their spans."""
    import numpy as np

    from lipdsl.lang.load import check_source

    rng = np.random.default_rng(seed)
    pool = ["a", "-a", "+b", "pi", "-e", "1", "-2.5", "1e-3", "b", "-pi"]
    rows, cols = int(rng.integers(1, 4)), int(rng.integers(1, 6))
    entries = [[str(rng.choice(pool)) for _ in range(cols)] for _ in range(rows)]
    sep = str(rng.choice([", ", ",\n  ", " ,\t"]))
    fast = "[" + ",\n ".join("[" + sep.join(r) + "]" for r in entries) + "]"
    slow = "[" + ", ".join("[" + ", ".join(f"({x})*1" for x in r) + "]" for r in entries) + "]"
    head = f"let a = 1/3\nlet b = sqrt(2)\ninput {cols}\ndense d: {cols} -> {rows}, weight "
    w_fast = check_source(Source("<s>", head + fast + "\n")).layers[0].weight
    w_slow = check_source(Source("<s>", head + slow + "\n")).layers[0].weight
    np.testing.assert_array_equal(w_fast, w_slow)
    bad = fast.replace("b", "zz", 1) if "b" in fast else None
    if bad:
        with pytest.raises(LipdslError, match="unknown name 'zz'") as info:
            check_source(Source("<s>", head + bad + "\n"))
        line = (head + bad).split("\n")[info.value.span.line - 1]
        assert line[info.value.span.col - 1:].startswith("zz")


def test_one_mb_tensor_of_let_names_is_checked_in_seconds():
    import time

    from lipdsl.lang.load import check_source

    n = 1_000_000 // 3
    text = f"let a = 1/3\ninput {n}\ndense d: {n} -> 1, weight [[" + ",\n".join(["a"] * n) + "]]\n"
    t0 = time.perf_counter()
    net = check_source(Source("<s>", text))
    assert net.layers[0].weight.shape == (1, n)
    assert time.perf_counter() - t0 < 15  # 78 s before the NAMES token; ~3 s idle


# -- NAMES fast path: a NameTable per tensor, no Expr or sympy value per entry (issue 17) ------------------
_LETS = ("let a = 0.1\nlet b = -2\nlet c = 1/3\nlet d = 3.5e-7\nlet big = " + "9" * 40 + "\nlet z = -0.0\n"
         "let s = sqrt(2)\n")


def _checked_both_ways(text, monkeypatch):
    """check_source of ``text`` through the NAMES fast path and through the per-entry AST it replaced
    (``_numbers_slow``): each gives (weight, exact values) or the error's (type, message, span, hint)."""
    from lipdsl.lang import parse as parse_module
    from lipdsl.lang.load import check_source

    def run():
        try:
            layer = check_source(Source("<s>", text)).layers[0]
        except LipdslError as err:
            return type(err), err.message, err.span, err.hint
        return layer.weight, layer.weight_expr

    fast = run()
    with monkeypatch.context() as m:
        m.setattr(parse_module, "_names", lambda tok: parse_module._numbers_slow(tok, names=True))
        slow = run()
    return fast, slow


@pytest.mark.parametrize("seed", range(40))
def test_names_fast_path_gives_the_values_and_errors_of_the_entry_by_entry_path(seed, monkeypatch):
    """Random tensors of plain numbers and (signed) names bound to plain numbers, exact values (1/3,
    sqrt(2)), a 40-digit integer, -0.0, constants, unknown names, 1e400, 1e-400, long integers and ragged
    rows: the same float64 weights (bit for bit, signs of zero included), the same exact values, or the same
    error at the same place."""
    import numpy as np

    rng = np.random.default_rng(seed)
    pool = ["a", "-a", "+a", "b", "-b", "c", "-c", "d", "z", "-z", "pi", "-e", "1", "-2.5", "1e-3", "-0",
            "0.0", "-0.0", "12345678901234567890", "7"]
    bad = ["zz", "big", "-big", "1e400", "1e-400", "s"]
    rows, cols = int(rng.integers(1, 4)), int(rng.integers(1, 6))
    entries = [[str(rng.choice(pool)) for _ in range(cols)] for _ in range(rows)]
    if seed % 3 == 1:
        entries[int(rng.integers(rows))][int(rng.integers(cols))] = bad[seed // 3 % len(bad)]
    elif seed % 5 == 4 and cols > 1:
        entries[-1].pop()  # ragged
    tensor = "[" + ",\n ".join("[" + ", ".join(r) + "]" for r in entries) + "]"
    text = _LETS + f"input {cols}\ndense d: {cols} -> {rows}, weight {tensor}\n"
    fast, slow = _checked_both_ways(text, monkeypatch)
    if isinstance(slow[0], type):  # an error: the same one, at the same place
        assert fast == slow
        return
    assert fast[0].dtype == slow[0].dtype and fast[0].tobytes() == slow[0].tobytes()
    assert not fast[0].flags.writeable
    if slow[1] is None:  # numbers only: the NUMBERS token, no exact values
        assert fast[1] is None
        return
    assert fast[1].shape == slow[1].shape and fast[1] == slow[1] and repr(fast[1]) == repr(slow[1])


def test_names_fast_path_table_and_lazy_items():
    """A NAMES tensor keeps each distinct signed name once (first-use spans); its items, for anything that
    walks the tree, are the entry-by-entry AST; names bound to plain numbers import no sympy."""
    import subprocess
    import sys

    t = parse(Source("<s>", "let a = 1\ninput 3\ndense d: 3 -> 2, weight [[a, -a, 2],\n [ -a, b, a]]\n"))
    t = t.layers[0].options[0].value
    assert t.table.symbols == (("a", False), ("a", True), ("b", False)) and t.table.shape == (2, 3)
    assert t.table.first[1] == (Span(3, 30, 3, 32), Span(3, 31, 3, 32))  # '-a', then its name
    assert t.table.first[2][0] == Span(4, 8, 4, 9)
    assert t.table.exact_numbers == (2,) and t.table.codes.tolist() == [[0, 1, -1], [1, 2, 0]]
    assert len(t.items) == 2 and t.items[1].items[1].names[0].id == "b"
    code = ("import sys; from lipdsl.lang.load import check_source; from lipdsl.lang.source import Source; "
            "t = 'let a = 0.5\\nlet b = 2\\ninput 2\\ndense d: 2 -> 1, weight [[a, -b]]\\n'; "
            "w = check_source(Source('<s>', t)).layers[0]; assert 'sympy' not in sys.modules; "
            "assert str(w.weight_expr) == '[[1/2, -2]]' and 'sympy' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_names_bound_to_decimals_keep_the_decimals_float64():
    """A name bound to a plain decimal has that decimal's float64, as the same decimal written in the tensor
    (the entry-by-entry path rounded the exact decimal through 20 significant digits, which near the
    subnormal range gave 1.1739999999999997e-308 for 1.174e-308)."""
    from lipdsl.lang.load import check_source

    for x in ("1.174e-308", "1.9913316e-308", "0.1", "-3.25e17"):
        text = f"let a = {x}\ninput 2\ndense d: 2 -> 1, weight [[a, {x}]]\n"
        w = check_source(Source("<s>", text)).layers[0].weight
        assert w[0, 0] == w[0, 1] == float(x)


# -- `let` lines of plain arithmetic read without Lark (issue 17) ---------------------------------------
def _statements(text):
    """parse(text): every statement's kind, spans and (for a let) its value, type, span, depth and names, or
    the error's (type, message, span, hint)."""
    try:
        net = parse(Source("<s>", text))
    except LipdslError as err:
        return type(err).__name__, err.message, err.span, err.hint
    out = []
    for st in net.body:
        row = (type(st).__name__, st.span, getattr(st, "name_span", None))
        if isinstance(st, ast.Let):
            v = st.value
            value = v.value.sympy() if isinstance(v.value, ast.Deferred) else v.value
            row += (value, type(value).__name__, v.span, v.depth, v.names)
        out.append(row)
    return out


def _parsed_both_ways(text, monkeypatch):
    """``_statements(text)`` with the fast `let` reader and with Lark alone."""
    from lipdsl.lang import parse as parse_module

    fast = _statements(text)
    with monkeypatch.context() as m:
        m.setattr(parse_module, "_fast_lets", lambda text: (text, []))
        slow = _statements(text)
    return fast, slow


@pytest.mark.parametrize("seed", range(30))
def test_fast_let_lines_parse_as_lark_does(seed, monkeypatch):
    """Random `let` lines of numbers, operators and parentheses (with names, calls, 1e400, 1e-400, 1/0 and
    continued or bracketed neighbours, which the fast reader leaves to Lark), among other statements: the
    same statements, values (exact rationals), spans and depths, or the same error at the same place."""
    import random

    from lipdsl.lang import parse as parse_module

    rng = random.Random(seed)
    atoms = ["1", "2", "0", "0.1", "3.5e-2", "7.", ".5", "10", "123456789012345678901234567890", "1e400",
             "1e-400", "x", "pi", "sqrt(2)", "b", "b", "c_1", "e"]

    def gen(depth=0):
        r = rng.random()
        if depth > 4 or r < 0.3:
            return rng.choice(atoms)
        if r < 0.45:
            return rng.choice(["-", "+", "- "]) + gen(depth + 1)
        if r < 0.6:
            return "(" + gen(depth + 1) + ")"
        return gen(depth + 1) + rng.choice([" ", ""]) + rng.choice("+-*/^") + rng.choice([" ", ""]) + \
            gen(depth + 1)

    fast_lines = 0
    for _ in range(20):
        lines = [f"{rng.choice(['', '  ', chr(9)])}let a{k} = {gen()}{rng.choice(['', ' ', ' # c', chr(13)])}"
                 for k in range(rng.randint(1, 4))]
        extra = rng.choice(["", "dense d: 1 -> 1, weight [[1],\n", "conv1d c: 1 -> 1, kernel 1, weight w,\n",
                            "residual r:\n", "relu\n", "let q = (1 +\n", ")\n", "shortcut\n", "end\n"])
        at = rng.randint(0, len(lines))
        text = "input 1\n" + "".join(f"{line}\n" for line in lines[:at]) + extra + \
            "".join(f"{line}\n" for line in lines[at:]) + "relu\n"
        fast_lines += len(parse_module._fast_lets(text)[1])
        fast, slow = _parsed_both_ways(text, monkeypatch)
        assert fast == slow, text
    assert fast_lines > 0


def test_fast_let_lines_make_no_sympy_for_plain_numbers_and_keep_lark_errors(monkeypatch):
    import subprocess
    import sys

    code = ("import sys; from lipdsl.lang.parse import parse; from lipdsl.lang.source import Source; "
            "net = parse(Source('<s>', 'let a = 0.5\\nlet b = -(2)\\ninput 1\\nrelu\\n')); "
            "assert 'sympy' not in sys.modules and [s.value.value for s in net.body[:2]] == [0.5, -2]")
    subprocess.run([sys.executable, "-c", code], check=True)
    for text in ("let a = 1 +\nlet b = 2\ninput 1\n", "let a = 2\nlet b = (1\ninput 1\n",
                 "input 1\nresidual r:\nlet a = 1/3\nrelu\nend\n", "let a = 2\n)\ninput 1\n",
                 "let a = 2^" + "1" * 5000 + "\ninput 1\n", "let a = (" * 40 + "1" + ")" * 40 + "\ninput 1\n",
                 "let a = " + "-(" * 120 + "1" + ")" * 120 + "\ninput 1\n",
                 "let a = " + "1+" * 150 + "1\ninput 1\n",
                 "let a = 1.5e-400 * 2\ninput 1\n"):
        fast, slow = _parsed_both_ways(text, monkeypatch)
        assert fast == slow and isinstance(fast, tuple), (text, fast)


@pytest.mark.parametrize("seed", range(40))
def test_fast_let_lines_with_names_check_as_sympy_does(seed, monkeypatch):
    """`let` lines of numbers and earlier names under + - * / (kept as ast.Deferred, evaluated with
    Fractions by check when every name is rational) give the values, weights and errors of the general path
    (Lark, sympy): names bound to decimals, rationals, sqrt(2), zero divisors, unknown names."""
    import random

    from lipdsl.lang import parse as parse_module
    from lipdsl.lang.load import check_source

    rng = random.Random(seed)
    lets = ["let a0 = 0.25", "let a1 = 1/3", "let a2 = sqrt(2)", "let a3 = 0", "let a4 = -7"]
    for k in range(5, 12):
        names = [f"a{j}" for j in range(k)] + (["zz"] if seed % 4 == 3 and k == 11 else [])

        def gen(names, depth=0):
            r = rng.random()
            if depth > 3 or r < 0.35:
                return rng.choice(names + ["2", "0.5", "1e-3", "0"])
            if r < 0.45:
                return "-" + gen(names, depth + 1)
            if r < 0.55:
                return "(" + gen(names, depth + 1) + ")"
            return gen(names, depth + 1) + rng.choice([" +", " -", " *", " /"]) + " " + gen(names, depth + 1)

        lets.append(f"let a{k} = {gen(names)}")
    text = "\n".join(lets) + "\ninput 3\ndense d: 3 -> 1, weight [[a9, a10, a11]]\n"

    def run():
        try:
            layer = check_source(Source("<s>", text)).layers[0]
        except LipdslError as err:
            return type(err).__name__, err.message, err.span, err.hint
        return layer.weight.tobytes(), repr(layer.weight_expr)

    fast = run()
    with monkeypatch.context() as m:
        m.setattr(parse_module, "_fast_lets", lambda text: (text, []))
        slow = run()
    assert fast == slow, text


def test_decimal_arithmetic_of_lets_equals_the_fraction_arithmetic():
    """``ast._decimal_value`` (sums and products of decimals as ``m / 10^e``, no gcd per operation) gives
    exactly the Fraction arithmetic's value on 3000 random trees of names, decimals and decimal fractions,
    and leaves divisions and non-decimal values to the Fraction path."""
    import random
    from fractions import Fraction

    import sympy

    from lipdsl.lang import ast as lang_ast

    rng = random.Random(0)
    env = {"a": sympy.Rational(3, 8), "b": sympy.Rational(-7, 1250), "c": sympy.Integer(5)}

    def tree(depth):
        if depth == 0 or rng.random() < 0.3:
            r = rng.random()
            if r < 0.3:
                return ("name", rng.choice("abc"))
            if r < 0.6:
                return rng.choice([0.5, 1.25, 3.0, -0.001, 1e-5, 2.5e10, 7])
            return Fraction(rng.randint(-50, 50), rng.choice([1, 2, 4, 5, 8, 10, 20, 25, 125, 1000]))
        if rng.random() < 0.2:
            return ("neg", tree(depth - 1))
        return ("op", rng.choice(["add", "sub", "mul"]), tree(depth - 1), tree(depth - 1))

    def reference(node):
        if isinstance(node, tuple):
            if node[0] == "name":
                return lang_ast.fraction(env[node[1]])
            if node[0] == "neg":
                return -reference(node[1])
            a, b = reference(node[2]), reference(node[3])
            return a + b if node[1] == "add" else a - b if node[1] == "sub" else a * b
        return lang_ast.fraction(node)

    checked = 0
    for _ in range(3000):
        t = tree(6)
        try:
            value = lang_ast._decimal_value(t, env, {})
        except lang_ast._NotDecimal:
            continue
        checked += 1
        assert value == reference(t)
    assert checked > 2000
    for odd in [("op", "div", 1.5, 0.5), ("name", "d"), Fraction(1, 3)]:
        with pytest.raises(lang_ast._NotDecimal):
            lang_ast._decimal_value(odd, {"d": sympy.Rational(1, 3)}, {})


@pytest.mark.parametrize("seed", range(25))
def test_flat_let_lines_read_as_the_recursive_reader_and_lark_do(seed, monkeypatch):
    """`let` lines that are flat sums of products (``lang/let_flat.py``: one loop, exact ``m / 10^e``) give
    the statements, values, spans, depths and names of the recursive reader and of Lark alone, and check
    to the same weights or errors: names bound to decimals, rationals, sqrt(2) and unknown names; unary
    signs; 0, huge and tiny literals, 1e400, pi, keywords; chains long enough to pass MAX_DEPTH; values
    past MAX_BITS."""
    import random

    from lipdsl.lang import fast_let, let_flat
    from lipdsl.lang import parse as parse_module
    from lipdsl.lang.load import check_source

    rng = random.Random(seed)
    numbers = ["0", "1", "2", "0.5", "0.125", "-0.0", "1e-3", "2.5e10", "7.", ".25", "3" * 300, "9" * 999,
               "1e-300", "1e-320", "1e400", "1e-400", "0.1", "123.456"]
    lets = ["let a0 = 0.25", "let a1 = 1/3", "let a2 = sqrt(2)", "let a3 = 0", "let a4 = -7",
            "let a5 = 10^2000", "let a6 = 0.001"]
    for k in range(7, 14):
        names = [f"a{j}" for j in range(k)] + ["pi", "e", "kernel", "zz"][: rng.choice([0, 0, 0, 1, 2, 3, 4])]
        terms = []
        for _ in range(rng.choice([1, 2, 3, 5, 30, 60, 120])):
            factors = [rng.choice(["", "", "-", "+", "- -", "-+"]) + rng.choice(names + numbers)
                       for _ in range(rng.choice([1, 1, 2, 3]))]
            terms.append(rng.choice(["*", " * "]).join(factors))
        text = terms[0]
        for t in terms[1:]:
            text += rng.choice([" + ", " - ", "+", "-"]) + t
        lets.append(f"let a{k} = {text}")
    text = "\n".join(lets) + "\ninput 3\ndense d: 3 -> 1, weight [[a11, a12, a13]]\n"

    def checked():
        try:
            layer = check_source(Source("<s>", text)).layers[0]
        except LipdslError as err:
            return type(err).__name__, err.message, err.span, err.hint
        return layer.weight.tobytes(), repr(layer.weight_expr)

    fast = _statements(text), checked()
    with monkeypatch.context() as m:
        m.setattr(fast_let, "read_flat", lambda *a: None)
        recursive = _statements(text), checked()
    with monkeypatch.context() as m:
        m.setattr(parse_module, "_fast_lets", lambda text: (text, []))
        slow = _statements(text), checked()
    assert fast == recursive == slow, text
    assert let_flat.read_flat("x = 1 + 2", 3, 1) is not None


def test_flat_let_lines_are_taken_by_the_flat_reader():
    from lipdsl.lang import ast as lang_ast
    from lipdsl.lang import parse as parse_module

    text = "let a = 0.5\nlet b = a * 0.25 + -a*2 - 3 * a * a\nlet c = 1 + 2 * 0.5\ninput 1\n"
    lets = parse_module._fast_lets(text)[1]
    assert isinstance(lets[1].value.value, lang_ast.Deferred) and lets[1].value.value.terms is not None
    assert lets[2].value.value == 2  # (sympy Rational 2: folded exactly)


@pytest.mark.parametrize("line, message, caret, hint", [
    ("conv1d 2 -> 2, kernel 1, weight 0.weight", "a tensor key cannot start with a digit: write '_0.weight'",
     "0.weight", "'_0.weight' reads the file's '0.weight'"),
    ('conv1d 2 -> 2, kernel 1, weight "seq.npz":0.weight',
     "a tensor key cannot start with a digit: write '_0.weight'", "0.weight", "'_0.weight' reads"),
    ("batchnorm 2, weights 1", "a key prefix cannot start with a digit: write '_1'", "1",
     "'_1' reads the file's 1.weight, 1.bias, 1.running_mean and 1.running_var"),
    ('batchnorm 2, weights "seq.npz":12', "a key prefix cannot start with a digit: write '_12'", "12",
     "'_12'"),
    ("batchnorm 2, running_mean 1.running_mean", "write '_1.running_mean'", "1.running_mean", "'_1.running"),
    # a plain number where a tensor goes: the table's message, and how to write either
    ("dense 2 -> 2, bias 0", "expected a tensor", "0", "as in [0]; a key that starts with a digit is "
     "written with '_' before it: _0"),
    ("dense 2 -> 2, bias 1e-3", "expected a tensor", "1e-3", "a tensor is written in brackets, as in [1e-3]"),
])
def test_keys_starting_with_a_digit_are_told_the_spelling_that_parses(line, message, caret, hint):
    """A top-level nn.Sequential's keys (0.weight, the batch norm prefix 1) are written _0.weight, _1:
    the error says so, with the caret on the whole key; the spelling it suggests parses."""
    text = f'input 2 x 4\nweights "seq.npz"\n{line}\n'
    with pytest.raises(ParseError) as err:
        p(text)
    assert message in err.value.message and hint in err.value.hint
    span = err.value.span
    assert span.line == 3 and line[span.col - 1:span.end_col - 1] == caret
    if "write '_" in message:
        p(text.replace(caret, "_" + caret, 1))
