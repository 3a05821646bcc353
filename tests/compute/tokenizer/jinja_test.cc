// The Jinja subset and chat templates: every case of jinja_cases.json (real chat templates of Qwen3, Llama 3.2,
// Mistral Nemo, Gemma 2, Phi-3.5, DeepSeek R1 and ChatML over conversations with system prompts, several turns,
// tools and tool calls) byte for byte against @huggingface/jinja's renderings in jinja_golden.json; one test per
// language feature; one negative test per bad-input class; and ApplyChatTemplate on the real tokenizers.
#include "compute/tokenizer/jinja.h"

#include <gtest/gtest.h>

#include <string>

#include "compute/tokenizer/chat_template.h"
#include "compute/tokenizer/tokenizer.h"
#include "store/base/json.h"
#include "tests/util/files.h"
#include "tests/util/test_data.h"

namespace es {
namespace {

const std::string kHere = ES_SOURCE_DIR "/tests/compute/tokenizer";
const std::string kQwen3Dir = testing::kQwen3TokenizerDir;
const std::string kTinyDir = testing::kTinyModel;
const std::string kMixtralDir = testing::kAidreams;
constexpr size_t kGoldenCases = 67;

// Renders `source` with `variables_json` (a JSON object).
Result<std::string> Render(std::string_view source, std::string_view variables_json = "{}",
                           const jinja::Limits& limits = {}) {
  auto vars = ParseJson(variables_json);
  if (!vars.ok()) return vars.status();
  ES_ASSIGN_OR_RETURN(jinja::Template t, jinja::Template::Parse(source, limits));
  return t.Render(*vars);
}

// The rendering, or "ERROR: <message>" so a failing EXPECT_EQ shows why.
std::string R(std::string_view source, std::string_view variables_json = "{}") {
  auto r = Render(source, variables_json);
  return r.ok() ? *r : "ERROR: " + r.status().ToString();
}

// Reference cases ------------------------------------------------------------------------------------------

TEST(JinjaReferenceTest, EveryCaseMatchesHuggingFaceJinja) {
  auto cases = ParseJson(testing::ReadText(kHere + "/jinja_cases.json"));
  auto golden = ParseJson(testing::ReadText(kHere + "/jinja_golden.json"));
  ASSERT_TRUE(cases.ok() && golden.ok());
  const auto& list = cases->Find("cases")->array();
  const auto& expected = golden->Find("cases")->array();
  ASSERT_EQ(list.size(), kGoldenCases);
  ASSERT_EQ(expected.size(), list.size()) << "regenerate jinja_golden.json with jinja_reference.mjs";
  size_t errors = 0;
  for (size_t i = 0; i < list.size(); ++i) {
    const std::string& name = list[i].Find("name")->string_value();
    ASSERT_EQ(expected[i].Find("name")->string_value(), name);
    const std::string source =
        testing::ReadText(kHere + "/templates/" + list[i].Find("template")->string_value() + ".jinja");
    auto t = jinja::Template::Parse(source);
    ASSERT_TRUE(t.ok()) << name << ": " << t.status().ToString();
    auto out = t->Render(*list[i].Find("context"));
    if (const JsonValue* want = expected[i].Find("output")) {
      ASSERT_TRUE(out.ok()) << name << ": " << out.status().ToString();
      EXPECT_EQ(*out, want->string_value()) << name;
    } else {
      // The reference raised (raise_exception in the template): so must this engine, with the same message.
      ++errors;
      ASSERT_FALSE(out.ok()) << name << " rendered, but @huggingface/jinja raised";
      EXPECT_EQ(out.status().code(), Status::Code::kInvalidArgument) << name;
      EXPECT_NE(out.status().message().find(expected[i].Find("error")->string_value()), std::string::npos)
          << name << ": " << out.status().ToString();
    }
  }
  EXPECT_GT(errors, 0u);
}

// Whitespace control -----------------------------------------------------------------------------------------

TEST(JinjaTest, TextAndExpressions) {
  EXPECT_EQ(R("plain text"), "plain text");
  EXPECT_EQ(R("a{{ 1 + 2 }}b"), "a3b");
  EXPECT_EQ(R("{{ x }}", R"({"x": "hi"})"), "hi");
  EXPECT_EQ(R("[{{ missing }}]"), "[]");
  EXPECT_EQ(R("a{# a comment #}b"), "ab");
}

TEST(JinjaTest, TrimBlocksAndLstripBlocks) {
  // trim_blocks: the newline after a block tag goes; lstrip_blocks: indentation before one goes.
  EXPECT_EQ(R("{% if true %}\n  yes\n  {% endif %}\nafter"), "  yes\nafter");
  EXPECT_EQ(R("  {# c #}\nx"), "x");
  // Not for expression tags, and not when text precedes the tag on its line.
  EXPECT_EQ(R("  {{ 'v' }}\n"), "  v");
  EXPECT_EQ(R("a {% if true %}b{% endif %}"), "a b");
  // `+` turns lstrip off for one tag.
  EXPECT_EQ(R("  {%+ if true %}x{% endif %}"), "  x");
  // A single trailing newline of the template is dropped.
  EXPECT_EQ(R("x\n"), "x");
  EXPECT_EQ(R("x\n\n"), "x\n");
}

TEST(JinjaTest, MinusStripsWhitespace) {
  EXPECT_EQ(R("a  \n {{- 'b' -}} \n  c"), "abc");
  EXPECT_EQ(R("a\n  {%- if true -%}\n  b\n{%- endif %}"), "ab");
  EXPECT_EQ(R("a {#- c -#} b"), "ab");
}

TEST(JinjaTest, Raw) {
  EXPECT_EQ(R("{% raw %}{{ not rendered }}{% if %}{% endraw %}"), "{{ not rendered }}{% if %}");
  EXPECT_EQ(R("x {%- raw -%}  y  {%- endraw -%} z"), "xyz");
}

// Statements -------------------------------------------------------------------------------------------------

TEST(JinjaTest, IfElifElse) {
  const char* t = "{% if n == 1 %}one{% elif n == 2 %}two{% else %}many{% endif %}";
  EXPECT_EQ(R(t, R"({"n": 1})"), "one");
  EXPECT_EQ(R(t, R"({"n": 2})"), "two");
  EXPECT_EQ(R(t, R"({"n": 5})"), "many");
}

TEST(JinjaTest, ForLoopVariables) {
  EXPECT_EQ(R("{% for x in xs %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}{{ loop.revindex0 }}"
              "{{ loop.first }}{{ loop.last }}{{ loop.length }};{% endfor %}",
              R"({"xs": ["a", "b"]})"),
            "1021TrueFalse2;2110FalseTrue2;");
  EXPECT_EQ(R("{% for x in xs %}{{ loop.previtem }}<{{ x }}>{{ loop.nextitem }}|{% endfor %}", R"({"xs": [1, 2, 3]})"),
            "<1>2|1<2>3|2<3>|");
  EXPECT_EQ(R("{% for x in [] %}x{% else %}empty{% endfor %}"), "empty");
  EXPECT_EQ(R("{% for x in missing %}x{% endfor %}"), "");
  EXPECT_EQ(R("{% for c in 'héllo' %}{{ c }}.{% endfor %}"), "h.é.l.l.o.");
}

TEST(JinjaTest, ForUnpackFilterBreakContinue) {
  EXPECT_EQ(R("{% for k, v in d.items() %}{{ k }}={{ v }} {% endfor %}", R"({"d": {"a": 1, "b": 2}})"), "a=1 b=2 ");
  EXPECT_EQ(R("{% for k in d %}{{ k }}{% endfor %}", R"({"d": {"a": 1, "b": 2}})"), "ab");
  // The condition filters before the loop counts.
  EXPECT_EQ(R("{% for x in range(10) if x is odd %}{{ x }}/{{ loop.length }} {% endfor %}"),
            "1/5 3/5 5/5 7/5 9/5 ");
  EXPECT_EQ(R("{% for x in range(10) %}{% if x == 2 %}{% continue %}{% endif %}{% if x == 4 %}{% break %}"
              "{% endif %}{{ x }}{% endfor %}"),
            "013");
}

TEST(JinjaTest, SetScopingAndNamespace) {
  // A set inside a loop does not leak out of it; a namespace attribute does.
  EXPECT_EQ(R("{% set x = 1 %}{% for i in range(3) %}{% set x = i %}{% endfor %}{{ x }}"), "1");
  EXPECT_EQ(R("{% set ns = namespace(n=0) %}{% for i in range(4) %}{% set ns.n = ns.n + i %}{% endfor %}{{ ns.n }}"),
            "6");
  EXPECT_EQ(R("{% set a, b = [1, 2] %}{{ b }}{{ a }}"), "21");
  EXPECT_EQ(R("{% set block %}x{{ 1 + 1 }}y{% endset %}[{{ block }}]"), "[x2y]");
  EXPECT_EQ(R("{% set ns = namespace() %}{% set ns.v = 'k' %}{{ ns.v }}"), "k");
}

TEST(JinjaTest, Macros) {
  EXPECT_EQ(R("{% macro greet(name, punct='!') %}Hi {{ name }}{{ punct }}{% endmacro %}"
              "{{ greet('Ann') }} {{ greet('Bob', punct='?') }}"),
            "Hi Ann! Hi Bob?");
  // A macro sees the template's variables, not the caller's loop variables.
  EXPECT_EQ(R("{% macro m() %}{{ g }}{{ i }}{% endmacro %}{% for i in [1] %}{{ m() }}{% endfor %}", R"({"g": "G"})"),
            "G");
  // Recursion within the depth limit.
  EXPECT_EQ(R("{% macro f(n) %}{% if n > 0 %}{{ n }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(4) }}"), "4321");
}

TEST(JinjaTest, FilterBlockAndGeneration) {
  EXPECT_EQ(R("{% filter upper %}abc{% endfilter %}"), "ABC");
  EXPECT_EQ(R("{% generation %}kept{% endgeneration %}"), "kept");
}

// Expressions ------------------------------------------------------------------------------------------------

TEST(JinjaTest, Literals) {
  EXPECT_EQ(R(R"({{ 'a\'b' }}{{ "c\"d\n" }}{{ '\u00e9\x41' }})"), "a'bc\"d\néA");
  EXPECT_EQ(R("{{ 42 }} {{ 1.5 }} {{ 2.0 }} {{ 1e-5 }} {{ 1e20 }} {{ -3 }}"), "42 1.5 2.0 1e-05 1e+20 -3");
  EXPECT_EQ(R("{{ true }} {{ False }} {{ none }} {{ None }}"), "True False None None");
  EXPECT_EQ(R("{{ [1, 'a', none] }} {{ {'k': 'v'} }} {{ (1, 2) }}"), "[1, 'a', None] {'k': 'v'} [1, 2]");
  EXPECT_EQ(R("{{ 'con' 'cat' }}"), "concat");
}

TEST(JinjaTest, AttributesSubscriptsAndSlices) {
  const char* vars = R"({"m": {"role": "user", "items": "x"}, "xs": [10, 20, 30, 40], "s": "hello"})";
  EXPECT_EQ(R("{{ m.role }}{{ m['role'] }}{{ m.missing }}", vars), "useruser");
  // Looking into an undefined value gives undefined (as @huggingface/jinja does), not an error.
  EXPECT_EQ(R("[{{ m.missing.deeper }}{{ nothing[0].role }}] {{ nothing[0].role is defined }}", vars), "[] False");
  EXPECT_EQ(R("{{ xs[0] }} {{ xs[-1] }} {{ xs.1 }} {{ xs[9] }}", vars), "10 40 20 ");
  EXPECT_EQ(R("{{ xs[1:3] }} {{ xs[::-1] }} {{ xs[:-1] }} {{ xs[::2] }}", vars), "[20, 30] [40, 30, 20, 10] "
                                                                                "[10, 20, 30] [10, 30]");
  EXPECT_EQ(R("{{ s[1:] }} {{ s[::-1] }} {{ s[0] }} {{ s[-1] }}", vars), "ello olleh h o");
  // A key named like a method reads as the key; called, it is the method.
  EXPECT_EQ(R("{{ m.items }} {{ m.items() | length }}", vars), "x 2");
}

TEST(JinjaTest, Arithmetic) {
  EXPECT_EQ(R("{{ 7 + 2 }} {{ 7 - 2 }} {{ 7 * 2 }} {{ 7 / 2 }} {{ 7 // 2 }} {{ 7 % 3 }} {{ 2 ** 10 }}"),
            "9 5 14 3.5 3 1 1024");
  EXPECT_EQ(R("{{ -7 // 2 }} {{ -7 % 3 }} {{ 1.5 + 1 }} {{ 2 ** -1 }}"), "-4 2 2.5 0.5");
  EXPECT_EQ(R("{{ 'a' + 'b' }} {{ 'ab' * 3 }} {{ [1] + [2] }} {{ 1 ~ 'x' ~ none }}"), "ab ababab [1, 2] 1xNone");
  EXPECT_EQ(R("{{ 1 + 2 * 3 }} {{ (1 + 2) * 3 }} {{ 2 * 3 ** 2 }}"), "7 9 18");
  // Bases 0, 1 and -1 take any exponent at once (a loop over the exponent once hung on these).
  EXPECT_EQ(R("{{ (-1) ** 3879987999 }} {{ (-1) ** 3879987998 }} {{ 1 ** 9999999999 }} {{ 0 ** 0 }} {{ 0 ** 7 }}"),
            "-1 1 1 1 0");
}

TEST(JinjaTest, ComparisonsAndLogic) {
  EXPECT_EQ(R("{{ 1 < 2 }} {{ 2 <= 1 }} {{ 'a' < 'b' }} {{ 1 == 1.0 }} {{ 1 != 2 }} {{ [1, 2] == [1, 2] }}"),
            "True False True True True True");
  EXPECT_EQ(R("{{ 'b' in 'abc' }} {{ 2 in [1, 2] }} {{ 'k' in {'k': 1} }} {{ 'z' not in 'abc' }} {{ 1 in x }}"),
            "True True True True False");
  EXPECT_EQ(R("{{ 0 or 'x' }} {{ 1 and 'y' }} {{ not 0 }} {{ [] or none }} {{ not x is defined }}"),
            "x y True None True");
  EXPECT_EQ(R("{{ 'yes' if 1 else 'no' }} {{ 'yes' if 0 else 'no' }} [{{ 'only' if 0 }}]"), "yes no []");
}

TEST(JinjaTest, Tests) {
  EXPECT_EQ(R("{{ x is defined }} {{ x is undefined }} {{ none is none }} {{ 'a' is string }} {{ 1 is number }}"),
            "False True True True True");
  EXPECT_EQ(R("{{ 1 is integer }} {{ 1.0 is float }} {{ {} is mapping }} {{ [] is iterable }} {{ 'a' is sequence }}"),
            "True True True True True");
  EXPECT_EQ(R("{{ true is boolean }} {{ true is true }} {{ 0 is false }} {{ 4 is even }} {{ 3 is odd }}"),
            "True True False True True");
  EXPECT_EQ(R("{{ 'u' is equalto 'u' }} {{ 1 is eq 1 }} {{ 2 is == 2 }} {{ 3 is not none }} {{ 9 is divisibleby 3 }}"),
            "True True True True True");
  EXPECT_EQ(R("{{ range is callable }} {{ 'a' is callable }} {{ 'abc' is lower }} {{ 3 is gt 2 }}"),
            "True False True True");
}

// Filters ----------------------------------------------------------------------------------------------------

TEST(JinjaTest, StringFilters) {
  EXPECT_EQ(R("{{ '  x y  ' | trim }}|{{ 'xxaxx' | trim('x') }}|{{ 'Ab' | upper }}{{ 'Ab' | lower }}"),
            "x y|a|ABab");
  EXPECT_EQ(R("{{ 'hello wORLD-x (y' | title }}|{{ 'hELLO' | capitalize }}|{{ 'a-b-c' | replace('-', '+') }}"),
            "Hello World-X (Y|Hello|a+b+c");
  EXPECT_EQ(R("{{ '<a href=\"x\">&\\'' | e }}|{{ '<b>' | safe }}|{{ 12 | string }}|{{ 'a b  c' | wordcount }}"),
            "&lt;a href=&#34;x&#34;&gt;&amp;&#39;|<b>|12|3");
  EXPECT_EQ(R("{{ 'a\nb\n\nc' | indent(2) }}|{{ 'a\nb' | indent(2, true) }}|{{ 'a\n\nb' | indent(1, blank=true) }}"),
            "a\n  b\n\n  c|  a\n  b|a\n \n b");
}

TEST(JinjaTest, ToJson) {
  const char* vars = R"({"v": {"b": [1, 2.5, "x\"y\n"], "a": null, "t": true, "e": {}, "u": "é"}})";
  EXPECT_EQ(R("{{ v | tojson }}", vars), R"({"b": [1, 2.5, "x\"y\n"], "a": null, "t": true, "e": {}, "u": "é"})");
  EXPECT_EQ(R("{{ v.b | tojson(indent=2) }}", vars), "[\n  1,\n  2.5,\n  \"x\\\"y\\n\"\n]");
  EXPECT_EQ(R("{{ v | tojson(sort_keys=true, separators=[',', ':']) }}", vars),
            R"({"a":null,"b":[1,2.5,"x\"y\n"],"e":{},"t":true,"u":"é"})");
  EXPECT_EQ(R("{{ v.u | tojson(ensure_ascii=true) }} {{ '🙂' | tojson(ensure_ascii=true) }}", vars),
            R"("\u00e9" "\ud83d\ude42")");
}

TEST(JinjaTest, SequenceFilters) {
  const char* vars = R"({"xs": [3, 1, 2], "ms": [{"role": "user", "n": 2}, {"role": "bot", "n": 1},
                                                  {"role": "user", "n": 3}], "d": {"b": 1, "a": 2}})";
  EXPECT_EQ(R("{{ xs | length }} {{ xs | count }} {{ 'héllo' | length }} {{ d | length }} {{ x | length }}", vars),
            "3 3 5 2 0");
  EXPECT_EQ(R("{{ xs | first }} {{ xs | last }} {{ xs | sort }} {{ xs | sort(reverse=true) }} {{ xs | reverse }}",
              vars),
            "3 2 [1, 2, 3] [3, 2, 1] [2, 1, 3]");
  EXPECT_EQ(R("{{ xs | join(', ') }} {{ ms | map(attribute='role') | join }} {{ ms | sort(attribute='n') | "
              "map(attribute='n') | list }}",
              vars),
            "3, 1, 2 userbotuser [1, 2, 3]");
  EXPECT_EQ(R("{{ ms | selectattr('role', 'equalto', 'user') | map(attribute='n') | list }} "
              "{{ ms | rejectattr('role', 'eq', 'user') | list | length }} {{ xs | select('odd') | list }}",
              vars),
            "[2, 3] 1 [3, 1]");
  EXPECT_EQ(R("{{ d | items | list }} {{ d | dictsort }} {{ [1, 2, 1, 'A', 'a'] | unique | list }}", vars),
            "[['b', 1], ['a', 2]] [['a', 2], ['b', 1]] [1, 2, 'A']");
  EXPECT_EQ(R("{{ xs | map('string') | join('-') }} {{ [1, 2, 3, 4, 5] | batch(2) | list }} {{ xs | sum }} "
              "{{ xs | min }} {{ xs | max }}",
              vars),
            "3-1-2 [[1, 2], [3, 4], [5]] 6 1 3");
}

TEST(JinjaTest, NumberAndDefaultFilters) {
  EXPECT_EQ(R("{{ '42' | int }} {{ 'x' | int }} {{ 3.9 | int }} {{ '2.5' | float }} {{ -3 | abs }} "
              "{{ 2.567 | round(2) }} {{ 2.5 | round }}"),
            "42 0 3 2.5 3 2.57 3.0");
  EXPECT_EQ(R("{{ x | default('d') }} {{ '' | default('d') }} {{ '' | default('d', true) }} {{ x | d('e') }}"),
            "d  d e");
}

TEST(JinjaTest, StringAndDictMethods) {
  const char* vars = R"({"s": "<think>\nwhy\n</think>\n\nanswer", "d": {"k": "v"}})";
  EXPECT_EQ(R("{{ s.split('</think>')[-1].lstrip('\\n') }}|{{ s.split('</think>')[0].rstrip('\\n')"
              ".split('<think>')[-1].lstrip('\\n') }}",
              vars),
            "answer|why");
  EXPECT_EQ(R("{{ '  a b  '.strip() }}|{{ 'xxaxx'.strip('x') }}|{{ 'a,b,c'.split(',', 1) }}|"
              "{{ 'a,b,c'.rsplit(',', 1) }}|{{ ' a  b '.split() }}"),
            "a b|a|['a', 'b,c']|['a,b', 'c']|['a', 'b']");
  EXPECT_EQ(R("{{ 'abc'.startswith('ab') }} {{ 'abc'.endswith(('x', 'c')) }} {{ 'ab'.upper() }} {{ 'A B'.lower() }}"
              " {{ \"they're\".title() }} {{ 'aXa'.replace('a', 'b') }} {{ '-'.join(['x', 'y']) }}"),
            "True True AB a b They'Re bXb x-y");
  EXPECT_EQ(R("{{ d.get('k') }} {{ d.get('z', 'def') }} {{ d.get('z') }} {{ d.keys() | list }} {{ d.values() | list }}",
              vars),
            "v def None ['k'] ['v']");
  EXPECT_EQ(R("{{ '{} and {}'.format(1, 'x') }}"), "1 and x");
}

TEST(JinjaTest, Globals) {
  EXPECT_EQ(R("{{ range(3) | list }} {{ range(1, 7, 2) | list }} {{ range(3, 0, -1) | list }}"),
            "[0, 1, 2] [1, 3, 5] [3, 2, 1]");
  EXPECT_EQ(R("{{ strftime_now('%Y') | length }}"), "4");
  EXPECT_EQ(R("{{ dict(a=1)['a'] }}"), "1");
}

// Bad input: one test per class -------------------------------------------------------------------------------

void ExpectError(std::string_view source, Status::Code code, std::string_view fragment,
                 std::string_view vars = "{}", const jinja::Limits& limits = {}) {
  auto r = Render(source, vars, limits);
  ASSERT_FALSE(r.ok()) << "rendered: " << *r;
  EXPECT_EQ(r.status().code(), code) << r.status().ToString();
  EXPECT_NE(r.status().message().find(fragment), std::string::npos) << r.status().ToString();
}

TEST(JinjaErrorTest, UnclosedTags) {
  ExpectError("a {{ x ", Status::Code::kInvalidArgument, "line 1, column 3: unclosed '{{'");
  ExpectError("a\n {% if x ", Status::Code::kInvalidArgument, "line 2, column 2: unclosed '{%'");
  ExpectError("{# never closed", Status::Code::kInvalidArgument, "unclosed comment");
  ExpectError("{% raw %}abc", Status::Code::kInvalidArgument, "unclosed raw block");
  ExpectError("{{ 'abc }}", Status::Code::kInvalidArgument, "unterminated string");
}

TEST(JinjaErrorTest, UnclosedAndUnexpectedBlocks) {
  ExpectError("{% if x %}a", Status::Code::kInvalidArgument, "expected 'endif'");
  ExpectError("{% for x in y %}a{% endif %}", Status::Code::kInvalidArgument, "unexpected 'endif'");
  ExpectError("{% endfor %}", Status::Code::kInvalidArgument, "unexpected 'endfor'");
  ExpectError("{% break %}", Status::Code::kInvalidArgument, "'break' outside a for loop");
  ExpectError("{% frobnicate %}", Status::Code::kInvalidArgument, "unknown statement 'frobnicate'");
}

TEST(JinjaErrorTest, SyntaxErrorsNameTheirPlace) {
  ExpectError("{{ 1 + }}", Status::Code::kInvalidArgument, "column 8: expected an expression, got '}}'");
  ExpectError("{{ (1 }}", Status::Code::kInvalidArgument, "expected ')'");
  ExpectError("{{ a $ b }}", Status::Code::kInvalidArgument, "unexpected character '$'");
  ExpectError("{{ f(a=1, 2) }}", Status::Code::kInvalidArgument, "positional argument after keyword argument");
  ExpectError("{{ 99999999999999999999 }}", Status::Code::kInvalidArgument, "out of range");
}

TEST(JinjaErrorTest, UnsupportedConstructs) {
  ExpectError("{% include 'x' %}", Status::Code::kNotSupported, "'include' statement is not supported");
  ExpectError("{% for x in xs recursive %}{% endfor %}", Status::Code::kNotSupported, "recursive");
  ExpectError("{{ x | frobnicate }}", Status::Code::kNotSupported, "unknown filter 'frobnicate'");
  ExpectError("{{ x is frobnicated }}", Status::Code::kNotSupported, "unknown test 'frobnicated'");
}

TEST(JinjaErrorTest, RaiseException) {
  ExpectError("line one\n{{ raise_exception('roles must alternate') }}", Status::Code::kInvalidArgument,
              "line 2, column 4: the template raised an error: roles must alternate");
}

TEST(JinjaErrorTest, RuntimeTypeErrors) {
  ExpectError("{{ x.y() }}", Status::Code::kInvalidArgument, "cannot call 'y' on an undefined value");
  ExpectError("{{ x + 1 }}", Status::Code::kInvalidArgument, "undefined value ('x' is undefined)");
  ExpectError("{{ 'a' + 1 }}", Status::Code::kInvalidArgument, "unsupported operand types for +: str and int");
  ExpectError("{{ 1 // 0 }}", Status::Code::kInvalidArgument, "division by zero");
  ExpectError("{{ 9223372036854775807 + 1 }}", Status::Code::kInvalidArgument, "integer overflow");
  ExpectError("{{ 'a'.nope() }}", Status::Code::kInvalidArgument, "a str has no method 'nope'");
  ExpectError("{{ 5() }}", Status::Code::kInvalidArgument, "a int is not callable");
  ExpectError("{% set a, b = [1] %}", Status::Code::kInvalidArgument, "cannot unpack 1 values into 2 names");
  ExpectError("{% set n.x = 1 %}", Status::Code::kInvalidArgument, "not a namespace()");
  ExpectError("{{ 1 < 'a' }}", Status::Code::kInvalidArgument, "cannot compare int with str");
  ExpectError("{% for x in 5 %}{% endfor %}", Status::Code::kInvalidArgument, "cannot iterate over a int");
  ExpectError("{{ range | tojson }}", Status::Code::kInvalidArgument, "tojson cannot serialise a function");
  ExpectError("{{ x }}", Status::Code::kInvalidArgument, "must be a JSON object", "[1]");
}

TEST(JinjaErrorTest, RecursionLimit) {
  ExpectError("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", Status::Code::kResourceExhausted,
              "macro call depth");
  std::string deep_expr = "{{ " + std::string(1000, '(') + "1" + std::string(1000, ')') + " }}";
  ExpectError(deep_expr, Status::Code::kResourceExhausted, "nested too deeply");
  std::string deep_not = "{{ ";
  for (int i = 0; i < 1000; ++i) deep_not += "not ";
  ExpectError(deep_not + "1 }}", Status::Code::kResourceExhausted, "nested too deeply");
  std::string long_chain = "{{ 1";
  for (int i = 0; i < 100000; ++i) long_chain += "+1";
  ExpectError(long_chain + " }}", Status::Code::kResourceExhausted, "nested too deeply");
  std::string deep_blocks;
  for (int i = 0; i < 1000; ++i) deep_blocks += "{% if true %}";
  ExpectError(deep_blocks, Status::Code::kResourceExhausted, "blocks nested too deeply");
}

TEST(JinjaErrorTest, WorkAndOutputLimits) {
  ExpectError("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
              Status::Code::kResourceExhausted, "limit on work");
  ExpectError("{{ range(1000000000000) }}", Status::Code::kResourceExhausted, "range() length");
  ExpectError("{{ 'x' * 1000000000 }}", Status::Code::kResourceExhausted, "output size");
  ExpectError("{% set ns = namespace(s='xxxxxxxx') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}"
              "{% endfor %}",
              Status::Code::kResourceExhausted, "output size");
  jinja::Limits small;
  small.max_output_bytes = 10;
  ExpectError("{% for i in range(20) %}x{% endfor %}", Status::Code::kResourceExhausted, "output size", "{}", small);
  small.max_template_bytes = 4;
  ExpectError("hello", Status::Code::kResourceExhausted, "over the limit", "{}", small);
}

// Chat templates on the real tokenizers ------------------------------------------------------------------------

std::string GoldenOutput(const std::string& name) {
  auto golden = ParseJson(testing::ReadText(kHere + "/jinja_golden.json"));
  EXPECT_TRUE(golden.ok());
  for (const JsonValue& c : golden->Find("cases")->array()) {
    if (c.Find("name")->string_value() == name) return c.Find("output")->string_value();
  }
  ADD_FAILURE() << "no golden case " << name;
  return {};
}

TEST(ChatTemplateTest, Qwen3UsesItsOwnTemplate) {
  ES_REQUIRE_DATA(kQwen3Dir + "/tokenizer_config.json");
  auto t = Tokenizer::FromFile(kQwen3Dir + "/tokenizer.json", kQwen3Dir + "/tokenizer_config.json");
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  EXPECT_EQ(t->chat_template(), testing::ReadText(kHere + "/templates/qwen3.jinja"));
  EXPECT_EQ(t->bos_token(), std::nullopt);  // tokenizer_config.json has "bos_token": null
  EXPECT_EQ(t->eos_token(), "<|im_end|>");
  auto text = ApplyChatTemplate(*t, "Hello! What is 2+2?");
  ASSERT_TRUE(text.ok()) << text.status().ToString();
  EXPECT_EQ(*text, GoldenOutput("qwen3/single"));
  ChatMessage conv[] = {{"system", "You are terse."}, {"user", "Hi"}, {"assistant", "Hello. How can I help?"},
                        {"user", "Tell me a joke about {{ braces }} and 'quotes' \"too\"."}};
  text = ApplyChatTemplate(*t, conv, {.add_generation_prompt = false, .enable_thinking = std::nullopt});
  ASSERT_TRUE(text.ok()) << text.status().ToString();
  EXPECT_EQ(*text, GoldenOutput("qwen3/multiturn/no_generation_prompt"));
  ChatMessage quick[] = {{"user", "Quick answer please"}};
  text = ApplyChatTemplate(*t, quick, {.enable_thinking = false});
  ASSERT_TRUE(text.ok()) << text.status().ToString();
  EXPECT_EQ(*text, GoldenOutput("qwen3/enable_thinking_false"));
}

TEST(ChatTemplateTest, TinyModelUsesItsOwnTemplate) {
  ES_REQUIRE_DATA(kTinyDir + "/tokenizer_config.json");
  auto t = Tokenizer::FromFile(kTinyDir + "/tokenizer.json", kTinyDir + "/tokenizer_config.json");
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  EXPECT_EQ(t->chat_template(), testing::ReadText(kHere + "/templates/tiny-qwen3-moe.jinja"));
  auto text = ApplyChatTemplate(*t, "Hello! What is 2+2?");
  ASSERT_TRUE(text.ok()) << text.status().ToString();
  EXPECT_EQ(*text, GoldenOutput("tiny-qwen3-moe/single"));
}

TEST(ChatTemplateTest, ChatMlFallbackWithoutATemplate) {
  ES_REQUIRE_DATA(kQwen3Dir + "/tokenizer.json");
  auto t = Tokenizer::FromFile(kQwen3Dir + "/tokenizer.json");  // no tokenizer_config.json: no template
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  EXPECT_TRUE(t->chat_template().empty());
  auto text = ApplyChatTemplate(*t, "Hello! What is 2+2?");
  ASSERT_TRUE(text.ok()) << text.status().ToString();
  EXPECT_EQ(*text, GoldenOutput("chatml/single"));
  EXPECT_EQ(*text, "<|im_start|>user\nHello! What is 2+2?<|im_end|>\n<|im_start|>assistant\n");
}

TEST(ChatTemplateTest, NoTemplateAndNoChatMlTokensIsNotSupported) {
  ES_REQUIRE_DATA(kMixtralDir + "/tokenizer_config.json");
  auto t = Tokenizer::FromFile(kMixtralDir + "/tokenizer.json", kMixtralDir + "/tokenizer_config.json");
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  EXPECT_EQ(t->bos_token(), "<s>");
  EXPECT_EQ(t->eos_token(), "</s>");
  auto text = ApplyChatTemplate(*t, "hi");
  ASSERT_FALSE(text.ok());
  EXPECT_EQ(text.status().code(), Status::Code::kNotSupported);
  EXPECT_EQ(text.status().message(), "this model has no chat template (tokenizer_config.json has no chat_template)");
}

TEST(ChatTemplateTest, ConfigForms) {
  ES_REQUIRE_DATA(kTinyDir + "/tokenizer.json");
  const std::string tokenizer_json = testing::ReadText(kTinyDir + "/tokenizer.json");
  auto listed = Tokenizer::FromJson(
      tokenizer_json,
      R"({"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]})");
  ASSERT_TRUE(listed.ok()) << listed.status().ToString();
  EXPECT_EQ(listed->chat_template(), "D");
  auto bad = Tokenizer::FromJson(tokenizer_json, R"({"chat_template": 5})");
  EXPECT_EQ(bad.status().code(), Status::Code::kInvalidArgument);
  // A template error surfaces from ApplyChatTemplate, not from loading.
  auto broken = Tokenizer::FromJson(tokenizer_json, R"({"chat_template": "{% if %}"})");
  ASSERT_TRUE(broken.ok()) << broken.status().ToString();
  auto text = ApplyChatTemplate(*broken, "hi");
  ASSERT_FALSE(text.ok());
  EXPECT_NE(text.status().message().find("chat template: template line 1"), std::string::npos)
      << text.status().ToString();
}

}  // namespace
}  // namespace es
