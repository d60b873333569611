"""Syntax errors: Lark's UnexpectedInput -> ParseError, through the tested SYNTAX_ERRORS table (Lark's
GRAMMAR_ERRORS idea) and keyword suggestions ("unknown layer 'linear' -- did you mean 'dense'?")."""

from __future__ import annotations

import re
from copy import copy

from lark import Token
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken
from lark.lexer import PatternStr
from lark.parsers.lalr_parser_state import ParserState

from lipdsl.errors import ParseError
from lipdsl.lang.ast import OPTIONS
from lipdsl.lang.parse import _parser, keyword_name_error, keywords, option_keyword_error
from lipdsl.lang.source import Source, Span

#: Every layer option's keyword, from ast.OPTIONS (which options each layer kind takes), in its order.
OPTION_WORDS = tuple(dict.fromkeys(word for words in OPTIONS.values() for word in words))

# How terminals are named in "expected ..." lists when no example matches.
_TERMINAL_WORDS = {
    "NAME": "a name",
    "KEY": "a tensor key",
    "NUMBER": "a number",
    "STRING": "a quoted file name",
    "_NL": "the end of the line",
    "_TIMES": "'x'",
    "_POW": "'^'",
    "NUMBERS": "an inline tensor",
    "$END": "the end of the file",
}


# Plain-word messages for syntax errors, each with bad examples that reach the same parser state
# (Lark's own grammar loader does this with GRAMMAR_ERRORS). tests/lang/test_parse.py checks that every
# example fails and is matched back to its own message.
SYNTAX_ERRORS: list[tuple[str, list[str]]] = [
    (
        "a line must start with network, input, weights, let, a layer kind (conv1d, dense, avgpool, maxpool, "
        "global_avgpool, flatten, batchnorm, residual) or an activation name",
        ["1 -> 2\n", "-> 2\n", '"ecg.npz"\n', "[1]\n", "(relu)\n"],
    ),
    (
        "write the layer kind first and then its name, as in 'conv1d c1: 1 -> 2'",
        ["c1: conv1d 1 -> 2\n", "f1: dense 3 -> 4\n"],
    ),
    ("'network' needs a name, as in 'network ecg'", ["network\n", 'network "ecg"\n', "network 3\n"]),
    (
        "expected 'input C x N', 'input C x *' or 'input N'",
        ["input\n", "input 1 x\n", "input 1 128\n", "input 1 x 128 x 2\n", "input x 128\n"],
    ),
    (
        "'weights' needs a file name in double quotes, as in 'weights \"net.npz\"'",
        ["weights ecg.npz\n", "weights\n", "weights ecg\n", 'weights "a.npz" "b.npz"\n'],
    ),
    ("a file name needs a closing '\"'", ['weights "ecg.npz\n', 'dense 1 -> 1, weight "w.npy\n']),
    (
        "expected 'let NAME = VALUE', as in 'let a = 1/8'",
        ["let a 3\n", "let = 3\n", "let 3 = a\n", "let a = 1 = 2\n", "let a := 2\n"],
    ),
    ("missing value after '='", ["let a =\n"]),
    (
        "incomplete expression: an operator needs a value after it",
        [
            "let a = 1 +\n",
            "let a = 2 * * 3\n",
            "let a = 2 ^\n",
            "let a = -\n",
            "let a = 1 /\n",
            "let a = 1 -\n",
            "let a = 2 **\n",
        ],
    ),
    ("two values in a row: is an operator missing?", ["let a = 2 3\n", "let a = 2 b\n", "let a = (1) 2\n"]),
    ("a function takes its argument in parentheses, as in sqrt(2)", ["let a = sqrt 2\n"]),
    ("missing ')'", ["let a = sqrt(2 3)\n", "let a = (1 + 2 3)\n", "let a = (1 relu\n"]),
    ("this '(' is never closed", ["let a = sqrt(2\n", "let a = (1 + 2\n", "let a = (\n", "leaky_relu(0.1\n"]),
    (
        "a layer name must be followed by ':', as in 'conv1d c1: 1 -> 2'",
        ["conv1d c1 1 -> 2\n", "dense d1 3 -> 4\n"],
    ),
    (
        "expected 'IN -> OUT' sizes after the layer kind, as in 'conv1d c1: 1 -> 2'",
        [
            "conv1d\n",
            "conv1d c1:\n",
            "conv1d c1: -> 2\n",
            "dense\n",
            "dense d1:\n",
            "dense d1: -> 4\n",
            "conv1d c1: , kernel 3\n",
            "dense d: , weight w\n",
        ],
    ),
    (
        "missing '->' between the input and output sizes",
        [
            "conv1d c1: 1 2\n",
            "dense d1: 96 60\n",
            "conv1d c1: 1, 2\n",
            "dense 1\n",
            "conv1d 1\n",
            "conv1d c1: 1 => 2\n",
            "dense f1: 96\n",
            "conv1d c1: 1\n",
        ],
    ),
    ("missing output size after '->'", ["conv1d c1: 1 ->\n", "dense 3 -> , weight w\n", "dense f1: 96 ->\n"]),
    (
        "options are written as a keyword and a value without '=', as in 'kernel 3'",
        [
            "conv1d c: 1 -> 2, kernel=3\n",
            "conv1d c: 1 -> 2, stride=2\n",
            "conv1d c: 1 -> 2, dilation=2\n",
            "conv1d c: 1 -> 2, padding=1\n",
            "dense d: 1 -> 2, weight=w\n",
            "dense d: 1 -> 2, bias=b\n",
            "relu slope=[0, 1]\n",
            "conv1d c: 1 -> 2, kernel: 3\n",
            "dense d: 1 -> 2, weight: w\n",
        ],
    ),
    (
        "unknown option: a layer takes " + ", ".join(OPTION_WORDS[:-1]) + " or " + OPTION_WORDS[-1],
        [
            "conv1d c: 1 -> 2, kernal 3\n",
            "conv1d c: 1 -> 2 kernal 3\n",
            "dense d: 1 -> 2, wieght w\n",
            "relu, alpha 0\n",
            "conv1d c: 1 -> 2, 3\n",
            "relu r1 r2\n",
            "flatten f1 f2\n",
            "conv1d c: 1 -> 2,,\n",
            "avgpool 2, 2\n",
            "avgpool 2 2\n",
            "conv1d c: 1 -> 2, kernel 3, relu\n",
            "conv1d c: 1 -> 2, kernel 3 relu\n",
        ],
    ),
    (
        "missing value after the option's keyword",
        [
            "conv1d c: 1 -> 2, kernel\n",
            "conv1d c: 1 -> 2, stride\n",
            "conv1d c: 1 -> 2, dilation\n",
            "conv1d c: 1 -> 2, kernel, stride 1\n",
            "conv1d c: 1 -> 2, padding\n",
            "batchnorm 2, eps\n",
        ],
    ),
    (
        'expected a tensor: a key of the weights file, "file.npz":key, "file.npy" or inline [nested, lists]',
        [
            "dense d: 1 -> 1, weight\n",
            "dense d: 1 -> 1, weight 3\n",
            "dense d: 1 -> 1, bias\n",
            "dense d: 1 -> 1, bias 0\n",
            "dense d: 1 -> 1, weight -1\n",
            "batchnorm 2, weights\n",
            "batchnorm 2, running_mean\n",
            "batchnorm 2, running_var\n",
        ],
    ),
    (
        "expected a key after ':', as in \"file.npz\":conv1.weight",
        ['dense d: 1 -> 1, weight "w.npz":\n', 'dense d: 1 -> 1, weight "w.npz": "k"\n'],
    ),
    (
        "missing ',' or ']' in an inline tensor",
        [
            "dense d: 2 -> 1, weight [[1 2]]\n",
            "dense d: 2 -> 1, weight [[1, 2] [3, 4]]\n",
            "dense d: 2 -> 1, weight [[1, 2]\nrelu\n",
            "dense d: 2 -> 1, weight [[1, a b]]\n",
            "dense d: 2 -> 1, weight [[1, 2)]\n",
        ],
    ),
    (
        "this '[' is never closed",
        [
            "dense d: 2 -> 1, weight [[1, 2]\n",
            "dense d: 2 -> 1, weight [[1, 2\n",
            "dense d: 2 -> 1, weight [\n",
            "dense d: 2 -> 1, weight [[1, 2],\n",
            "relu slope [0, 1\n",
            "relu slope [\n",
            "relu slope [0,\n",
        ],
    ),
    ("expected a value in the inline tensor", ["dense d: 1 -> 1, weight [,]\n"]),
    (
        "'slope' needs two bounds in brackets, as in 'slope [0, 1]'",
        [
            "relu slope 0, 1\n",
            "relu slope [0]\n",
            "relu slope [0, 1, 2]\n",
            "relu slope\n",
            "relu slope []\n",
            "relu slope [0 1]\n",
        ],
    ),
    (
        "activation parameters go in parentheses, as in 'leaky_relu(0.01)'",
        ["leaky_relu 0.01\n", "elu 1\n", "leaky_relu -0.1\n"],
    ),
    ("an activation takes one parameter, as in 'leaky_relu(0.01)'", ["leaky_relu(0.1, 2)\n", "elu()\n"]),
    ("'padding' takes a number, valid, same or causal", ['conv1d c: 1 -> 2, padding "same"\n']),
    (
        "a residual block opens with a line 'residual' or 'residual NAME:'",
        ["residual:\n", "residual :\n", "residual r: 2\n", "residual r s\n"],
    ),
    ("'shortcut' and 'end' stand alone on their line", ["shortcut:\n", "end:\n", "shortcut s\n", "end r\n"]),
    (
        "after the layer kind come its name (then ':' if sizes follow), sizes or options, as in "
        "'batchnorm bn1: 16', 'avgpool 2' or 'flatten f1'",
        ["flatten:\n", "global_avgpool:\n", "batchnorm: 2\n", "avgpool: 2\n", "maxpool: 2\n"],
    ),
    ("expected the channel count after the name, as in 'batchnorm bn1: 16'", ["batchnorm bn1:\n"]),
    (
        "unexpected character",
        ["let a = 1 @ 2\n", "relu $\n", "let a = 1 % 2\n", "conv1d c: 1 -> 2; kernel 3\n"],
    ),
]


def _describe(tok: Token) -> str:
    if tok.type == "_NL":
        return "the end of the file" if tok.value == "" else "the end of the line"
    if tok.type == "$END":
        return "the end of the file"
    return repr(str(tok))


def _expected_words(names) -> str:
    parser = _parser()
    words = set()
    for n in names:
        if n in _TERMINAL_WORDS:
            words.add(_TERMINAL_WORDS[n])
            continue
        try:
            pattern = parser.get_terminal(n).pattern
        except KeyError:
            continue
        words.add(repr(pattern.value) if isinstance(pattern, PatternStr) else n.lower())
    listed = sorted(words)
    if len(listed) > 8:
        listed = listed[:8] + ["..."]
    return ", ".join(listed)


def _accepts(state: ParserState) -> frozenset[str]:
    """Terminals that the parser in ``state`` would accept next (Lark's InteractiveParser.accepts)."""
    conf = copy(state.parse_conf)
    conf.callbacks = {}
    accepted = set()
    for t in state.parse_conf.parse_table.states[state.position]:
        if t.isupper():
            trial = state.copy(deepcopy_values=False)
            trial.parse_conf = conf
            try:
                trial.feed_token(Token(t, ""), is_end=(t == "$END"))
            except UnexpectedInput:
                continue
            accepted.add(t)
    return frozenset(accepted)


def _signature(exc: UnexpectedInput) -> tuple | None:
    """(parser state, accepted terminals, offending terminal) of a syntax error, or None if unknown.

    Written out instead of Lark's ``UnexpectedInput.match_examples``, which in Lark 1.3 formats the
    ParserState it compares with ``%d`` and raises TypeError whenever two examples' accepts differ.
    """
    state = getattr(exc, "state", None)
    if not isinstance(state, ParserState):
        return None
    token_type = exc.token.type if isinstance(exc, UnexpectedToken) else None
    return state.position, _accepts(state), token_type


_EXAMPLE_SIGNATURES: list[tuple[str, tuple]] | None = None


def _example_signatures() -> list[tuple[str, tuple]]:
    global _EXAMPLE_SIGNATURES
    if _EXAMPLE_SIGNATURES is None:
        found = []
        for label, examples in SYNTAX_ERRORS:
            for text in examples:
                try:
                    _parser().parse(text)
                except UnexpectedInput as exc:
                    sig = _signature(exc)
                    if sig is not None:
                        found.append((label, sig))
        _EXAMPLE_SIGNATURES = found
    return _EXAMPLE_SIGNATURES


def match_syntax_error(exc: UnexpectedInput) -> str | None:
    """The SYNTAX_ERRORS message whose examples fail like ``exc`` (same state and accepts), or None.

    Among examples failing in the same state, one failing on the same kind of token is preferred. A bad
    character is not matched to examples that fail at the end of the line or file: their messages ("this '['
    is never closed") say what is missing at the end, which a character in the middle does not show.
    """
    sig = _signature(exc)
    if sig is None:
        return None
    ends = ("_NL", "$END")
    same_state = [label for label, s in _example_signatures()
                  if s[:2] == sig[:2] and not (sig[2] is None and s[2] in ends)]
    same_token = [label for label, s in _example_signatures() if s == sig]
    return (same_token or same_state or [None])[0]


#: The language's layer keywords, and what PyTorch (or habit) calls them: a name close to one of these is a
#: misspelled layer, not an activation known only by its slope. Kept here, not derived from parse.keywords():
#: the grammar does not say which of its words start a layer (as opposed to a header line, an option, a
#: padding mode or a block's 'shortcut'/'end'), and this order is the one messages list them in.
LAYER_KEYWORDS = ("conv1d", "dense", "avgpool", "maxpool", "global_avgpool", "flatten", "batchnorm",
                  "residual")


#: The words a line can start with other than an activation's name (header lines, then layers).
_STATEMENT_KEYWORDS = ("network", "input", "weights", "let") + LAYER_KEYWORDS




PYTORCH_NAMES = {
    "linear": "dense", "fc": "dense", "fully_connected": "dense", "conv": "conv1d", "convolution": "conv1d",
    "avgpool1d": "avgpool", "avg_pool1d": "avgpool", "avg_pool": "avgpool", "averagepool": "avgpool",
    "maxpool1d": "maxpool", "max_pool1d": "maxpool", "max_pool": "maxpool",
    "adaptiveavgpool1d": "global_avgpool", "adaptive_avg_pool1d": "global_avgpool",
    "globalaveragepool": "global_avgpool", "global_avg_pool": "global_avgpool",
    "reshape": "flatten", "view": "flatten", "leakyrelu": "leaky_relu", "logistic": "sigmoid",
    "hard_swish": "hardswish", "none": "identity",
    "batchnorm1d": "batchnorm", "batch_norm": "batchnorm", "batchnormalization": "batchnorm",
    "bn": "batchnorm", "resblock": "residual", "residualblock": "residual", "basicblock": "residual",
}


PYTORCH_OPTIONS = {"kernel_size": "kernel", "ksize": "kernel", "strides": "stride", "dilations": "dilation",
                   "pad": "padding", "pads": "padding", "weights": "weight", "biases": "bias"}


def suggest_keyword(word: str) -> str | None:
    """The layer keyword or activation ``word`` most likely means (``Conv1d`` -> ``conv1d``, ``linear`` ->
    ``dense``, ``rleu`` -> ``relu`` by difflib), or None."""
    import difflib

    from lipdsl.lang.activations import ACTIVATIONS

    low = word.lower()
    if low in PYTORCH_NAMES:
        return PYTORCH_NAMES[low]
    if low != word and (low in LAYER_KEYWORDS or low in ACTIVATIONS):
        return low
    close = difflib.get_close_matches(low, LAYER_KEYWORDS + tuple(ACTIVATIONS), n=1, cutoff=0.75)
    return close[0] if close else None


def _suggest_option(word: str) -> str | None:
    import difflib

    low = word.lower()
    if low in PYTORCH_OPTIONS:
        return PYTORCH_OPTIONS[low]
    close = difflib.get_close_matches(low, OPTION_WORDS, n=1, cutoff=0.7)
    return close[0] if close else None


_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _keyword_error(exc: UnexpectedInput, source: Source, err: ParseError) -> ParseError:
    """``err``, or a clearer one when the line starts with a misspelled / PyTorch-style layer keyword
    (``Conv1d``, ``maxpool1d``, ``linear(...)``), calls a keyword (``flatten()``) or misspells an option
    (``kernal 5``, ``kernel_size=3``)."""
    line = getattr(exc, "line", None)
    if not line or line < 1:
        return err
    text = source.line(line)
    m = re.match(r"[ \t\f\r]*([A-Za-z_][A-Za-z0-9_]*)", text)
    if m is None:
        return err
    word, span = m.group(1), Span(line, m.start(1) + 1, line, m.end(1) + 1)
    if word not in _STATEMENT_KEYWORDS:
        guess = suggest_keyword(word)
        if guess in LAYER_KEYWORDS:
            return ParseError(f"unknown layer {word!r} -- did you mean {guess!r}?", span,
                              hint=f"lipdsl's layers: {', '.join(LAYER_KEYWORDS)} (docs/language.md)")
    elif text[m.end(1):].lstrip(" \t").startswith("("):
        return ParseError(f"{word} takes no arguments in parentheses", span,
                          hint=f"write '{word}'" + (" and its options after it, as in 'conv1d c: 1 -> 4, "
                                                    "kernel 3, weight KEY'" if word != "flatten" else ""))
    col = getattr(exc, "column", None) or 1
    before = [w for w in _WORD.finditer(text) if w.start() <= col - 1]
    candidates = ([w for w in before if w.start() == col - 1] + before[-2:][::-1]) if before else []
    for w in candidates:
        if w.group() in OPTION_WORDS or w.group() in _STATEMENT_KEYWORDS:
            continue
        guess = _suggest_option(w.group())
        if guess is not None:
            wspan = Span(line, w.start() + 1, line, w.end() + 1)
            value = " 3" if guess == "kernel" else " 1" if guess in ("stride", "dilation") else ""
            hint = f"options are a keyword and a value, without '=': '{guess}{value}'"
            if err.message.startswith("unknown option"):  # the table's message, with the suggestion
                return ParseError(err.message, err.span, hint=f"did you mean {guess!r}? {hint}")
            return ParseError(f"unknown option {w.group()!r} -- did you mean {guess!r}?", wspan, hint=hint)
    return err


_DIGIT_KEY = re.compile(r"\d[A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*")
_PLAIN_NUMBER = re.compile(r"(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?(?![A-Za-z0-9_.])")
_AFTER_PREFIX = re.compile(r'\bweights[ \t]*(?:"[^"\n]*"[ \t]*:[ \t]*)?$')


def _digit_key_error(exc: UnexpectedInput, source: Source, err: ParseError) -> ParseError:
    """``err``, or a clearer one where a tensor key goes and the text starts with a digit: a key of a
    top-level ``nn.Sequential`` (``0.weight``, the prefix ``1``) is written ``_0.weight``, ``_1``
    (``weights.spelt_key``); a plain number there (``bias 0``) is told how to write a tensor."""
    tok = getattr(exc, "token", None)
    state = getattr(exc, "state", None)
    if not isinstance(tok, Token) or tok.start_pos is None or not isinstance(state, ParserState) \
            or "KEY" not in _accepts(state):
        return err
    m = _DIGIT_KEY.match(source.text, tok.start_pos)
    if m is None:
        return err
    key = m.group()
    prefix = _AFTER_PREFIX.search(source.line(tok.line)[:tok.column - 1]) is not None
    number = _PLAIN_NUMBER.match(source.text, tok.start_pos)
    if number and not prefix:
        also = f"; a key that starts with a digit is written with '_' before it: _{key}"
        return ParseError(err.message, err.span, hint=f"a tensor is written in brackets, as in "
                          f"[{number.group()}]" + (also if number.group() == key else ""))
    span = Span(tok.line, tok.column, tok.line, tok.column + len(key))
    what = "key prefix" if prefix else "tensor key"
    reads = (f"the file's {key}.weight, {key}.bias, {key}.running_mean and {key}.running_var" if prefix
             else f"the file's {key!r}")
    return ParseError(f"a {what} cannot start with a digit: write '_{key}'", span,
                      hint=f"'_{key}' reads {reads}: a key that starts with a digit is written with '_' "
                      "before it, as 'lipdsl import' writes it")


# Line-starting keywords that are not a layer kind (header lines, block markers): no layer options follow.
_NOT_LAYERS = ("network", "input", "weights", "let", "residual", "shortcut", "end")
_HEAD = re.compile(r"[ \t\f]*([A-Za-z_][A-Za-z0-9_]*)(?:[ \t\f]*\([^()\n]*\))?[ \t\f]+$")


def _keyword_name_error(exc: UnexpectedInput, source: Source, err: ParseError) -> ParseError:
    """``err``, or "'eps' is a keyword and cannot name a layer" at the keyword when a layer's kind is followed
    by an option keyword that ends the line or is followed by ':' (``relu eps``, ``flatten weights``,
    ``avgpool kernel:``): the lexer read the would-be name as the option. An option the layer takes, left
    without its value (``relu slope``, ``avgpool stride``), keeps the table's message."""
    tok, state = getattr(exc, "token", None), getattr(exc, "state", None)
    if not isinstance(exc, UnexpectedToken) or not isinstance(state, ParserState) or not state.value_stack \
            or tok.type not in ("_NL", "$END", "COLON"):
        return err
    word = state.value_stack[-1]
    if not isinstance(word, Token) or word.type == "NAME" or str(word) not in keywords() or word.line is None:
        return err
    head = _HEAD.fullmatch(source.line(word.line)[:word.column - 1])
    if head is None:
        return err
    kind = head.group(1)
    if kind in _NOT_LAYERS:
        return err
    family = {"avgpool": "pool", "maxpool": "pool"}.get(kind, kind)
    takes = OPTIONS.get(family, OPTIONS["activation"])
    if tok.type != "COLON" and str(word) in takes:
        return err
    return keyword_name_error(str(word), Span.of(word), "a layer")


_HEAD_WORD = re.compile(r"[ \t\f]*([A-Za-z_][A-Za-z0-9_]*)(?:[ \t\f]*\([^()\n]*\))?[ \t\f]+"
                        r"([A-Za-z_][A-Za-z0-9_]*)")


def _option_as_name_error(exc: UnexpectedInput, source: Source, err: ParseError) -> ParseError:
    """``err``, or an error at the keyword right after a layer's kind when the line fails after it: an option
    of that kind where its sizes go (``conv1d kernel 3``, ``batchnorm eps 1e-5``: the lexer read a name), or a
    keyword that is not its option (``swish eps slope [0, 1]``: refused as the layer's name)."""
    line, col = getattr(exc, "line", None), getattr(exc, "column", None)
    if not line or not col or line < 1:
        return err
    m = _HEAD_WORD.match(source.line(line))
    if m is None or m.end(2) >= col or m.group(2) not in keywords():
        return err
    kind, word = m.group(1), m.group(2)
    if kind in _NOT_LAYERS:
        return err
    family = {"avgpool": "pool", "maxpool": "pool"}.get(kind, kind if kind in OPTIONS else "activation")
    span = Span(line, m.start(2) + 1, line, m.end(2) + 1)
    if word not in OPTIONS[family]:
        named = keyword_name_error(word, span, "a layer")
        takes = ", ".join(OPTIONS[family]) or "none"
        what = "an activation" if family == "activation" else kind
        return ParseError(named.message, span, hint=f"{named.hint}; {word!r} is not an option of {what} "
                          f"(its options: {takes})")
    if family in ("conv1d", "dense", "batchnorm"):  # sizes come first: the keyword was read as a name
        return option_keyword_error(word, span, family)
    return err  # an option these layers take right after the kind ('avgpool kernel', 'relu slope')


def syntax_error(exc: UnexpectedInput, source: Source) -> ParseError:
    """Translate a Lark error into a ParseError in plain words, located at the offending token."""
    err = _keyword_error(exc, source, _digit_key_error(exc, source, _plain_syntax_error(exc, source)))
    return _option_as_name_error(exc, source, _keyword_name_error(exc, source, err))


def _plain_syntax_error(exc: UnexpectedInput, source: Source) -> ParseError:
    """The Lark error in plain words (the SYNTAX_ERRORS table, else the token and what was expected)."""
    label = match_syntax_error(exc)
    if isinstance(exc, UnexpectedCharacters):
        char = source.text[exc.pos_in_stream] if exc.pos_in_stream < len(source.text) else ""
        span = Span(exc.line, exc.column, exc.line, exc.column + 1)
        if char == "'" and "STRING" in exc.allowed:  # (the table's "needs a closing '\"'" would mislead)
            quoted = re.match(r"'([^'\n]*)'", source.text[exc.pos_in_stream:])
            name = quoted.group(1) if quoted else "net.npz"
            if source.line(exc.line)[:exc.column - 1].strip() == "weights":
                return ParseError("file names are written in double quotes, as in "
                                  f"'weights \"{name}\"'", span)
            return ParseError(f'file names are written in double quotes, as in "{name}"', span,
                              hint="a key of the weights file is written without quotes")
        found = f"unexpected character {char!r}"
        message = f"{label}: {found}" if label and label != "unexpected character" else found
        return ParseError(message, span)
    if isinstance(exc, UnexpectedToken):
        tok = exc.token
        line, col = tok.line or 1, tok.column or 1
        end_col = (tok.end_column or col + 1) if tok.value else col + 1
        span = Span(line, col, tok.end_line or line, max(end_col, col + 1))
        found = _describe(tok)
        if label:
            return ParseError(f"{label} (found {found})", span)
        expected = _expected_words(
            _accepts(exc.state) if isinstance(exc.state, ParserState) else exc.expected
        )
        return ParseError(  # "unexpected end of the line", "unexpected ':'"
            f"unexpected {found.removeprefix('the ')}", span,
            hint=f"expected one of: {expected}" if expected else None,
        )
    if isinstance(exc, UnexpectedEOF):  # pragma: no cover - the post-lexer always ends with a line break
        return ParseError("unexpected end of file", None)
    return ParseError(str(exc).strip().splitlines()[0], None)  # pragma: no cover
