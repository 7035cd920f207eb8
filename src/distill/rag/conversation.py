"""A standalone question for every turn of a conversation, so that a follow-up is answered in its
conversation and never replayed out of it.

A chat request carries the whole conversation, but retrieval, replay and the student read one
question. A follow-up whose meaning depends on the earlier turns ("And how long is the link
valid?", "How do I cancel?") asked alone is answered from the wrong entry, or refused; and it can
match a trained intent on its own words and be replayed out of context, the oldest complaint
against semantic caches. So each turn is first made standalone:

1. **Does it depend on the conversation?** (`depends_on_conversation`) It does when it opens like a
   follow-up ("and", "also", "what about"); when it is short (at most `MAX_OWN_WORDS` words of its
   own besides question words) and its first sentence refers back ("it", "that", "they", "the
   same"), since in a longer message "it" is usually something the message itself named; or when
   its one word of its own is a verb left without its object ("How do I cancel?", not "What is a
   notebook?"). A longer message that refers back depends on it when the earlier turns' words move
   retrieval to another document, clearly better matched (`shifted`: the router's retriever). A
   first turn never does; "it" in "is it safe to ..." refers to nothing.
2. **Rewrite.** With an LLM (`condense`: the teacher's, when its backend has one), a
   condense-question prompt, as LangChain's and LlamaIndex's chat engines use; the rewrite counts
   only when it is one question that no longer refers back, and retrieval puts the same document
   first for it as for the rule's question (a small model's rewrite often drifts to another entry). Otherwise, and whenever the LLM's
   rewrite does not count, the rule: the message followed by the words the recent user turns
   named that it does not ("How do I cancel? subscribed iphone"), which retrieval and the
   extractive teacher read well and nothing else should (it is not a question anyone asked).
3. **Who may answer it.** A self-contained turn and an LLM rewrite are standalone questions: they are
   routed like any other (`Turn.standalone`). A rule rewrite goes to RAG, with the conversation in
   its retrieval query, and is never replayed, never answered by the student, never trained on.

    turn = standalone_turn("And how long is the link valid?",
                           [{"role": "user", "content": "How do I reset my password?"},
                            {"role": "assistant", "content": "We email you a reset link."}])
    turn.method, turn.question     # ('rules', 'And how long is the link valid? reset password')

The trace keeps both: `query` is the question routed, `raw_message` the message as written,
`rewrite_method` how it was made standalone, `conversation_hash` which conversation it came from.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Callable

from distill.errors import DistillError

FOLLOW_UP_OPENING = re.compile(r"^\W*(and|also|but|so|then|plus|or|ok|okay|what about|how about|what else|"
                               r"anything else|same for|and if)\b", re.I)
REFERS_BACK = re.compile(r"\b(it|its|itself|they|them|their|theirs|this|these|those|he|him|his|she|her|"
                         r"the same|the other|the former|the latter)\b|"
                         r"(^|\b(does|do|did|is|was|about|for|with|of|on|in|to|like|than|get|use)\s+)that\b|\bthat\W*$", re.I)
# "it" and "there" that refer to nothing: "is it safe to", "how long does it take to", "is there a"
DUMMY_SUBJECT = re.compile(r"\bit('s|\s+is|\s+was)?(\s+\w+){0,3}\s+(to|that|if|whether)\b|\bdoes\s+it\s+matter\b", re.I)
MAX_OWN_WORDS = 3  # a message with more words of its own than this names what it asks about
LEADING_PRONOUN = re.compile(r"\b(it|its|they|them|their|these|those)\b", re.I)
MAX_WORDS_BEFORE_PRONOUN = 0  # chosen on the tune half of bench_conversations' entries (docs/benchmarks.md)
BARE_VERB = re.compile(r"\b(i|you|we|to|do|does|can|could|should|will)\s+[a-z'-]+\W*$", re.I)  # "how do I cancel?"
QUESTION_WORDS = frozenset(
    "a an the i me my we our you your do does did can could should would will is are was were be been am "
    "how what when where which who whom whose why to of in on at for with from by about into as or and but "
    "if so then there it its this that these those they them their he she his her also please any some "
    "much many long get make have has had not no yes just still ok okay".split())
ASKS = re.compile(r"^(how|what|when|where|which|who|whom|whose|why|is|are|am|was|were|do|does|did|can|could|"
                  r"should|would|will|may|might|must|shall|has|have|had)\b", re.I)  # opens a question
MAX_CONVERSATION_MESSAGES = 64  # a longer history is a bad request (the last turns are what a follow-up reads)
CONDENSE_PROMPT = ("Rewrite the last question of this conversation so that it can be understood without the "
                   "conversation. Keep its meaning and its words where you can; do not answer it. Reply with "
                   "the question only, on one line.")


@dataclass
class Turn:
    """One turn made standalone: what is routed, answered and logged as the query."""

    question: str  # the standalone question (or, for 'rules', the message with the earlier turns' words)
    message: str  # the last user message as written
    method: str  # 'none' (self-contained, or the first turn), 'llm' (condensed) or 'rules' (joined)
    conversation_hash: str | None = None  # the earlier turns' hash; None without them
    signal: str | None = None  # what made it depend on the conversation
    earlier: tuple[str, ...] = ()  # for 'rules': the recent user turns whose words it joined, oldest first

    @property
    def standalone(self) -> bool:
        """A question anyone might ask alone: replay, the student and training may see it."""
        return self.method in ("none", "llm")


def content_words(text: str) -> list[str]:
    """The words of `text` besides question words and pronouns: what it asks about.

        >>> content_words("How do I cancel?")
        ['cancel']
    """
    return [w for w in re.findall(r"[a-z0-9][a-z0-9'-]*", text.lower()) if w not in QUESTION_WORDS]


def depends_on_conversation(message: str) -> str | None:
    """Why `message` cannot be understood without the turns before it, or None when it can.

        >>> depends_on_conversation("And how long is the link valid?")
        'follow_up_opening'
        >>> depends_on_conversation("Is it safe to go hunting?") is None
        True
    """
    if FOLLOW_UP_OPENING.search(message):
        return "follow_up_opening"
    own = len(content_words(message))
    first_sentence = DUMMY_SUBJECT.sub(" ", re.split(r"(?<=[?.!])\s+", message.strip())[0])  # a later "it" is the first's
    if own <= MAX_OWN_WORDS and REFERS_BACK.search(first_sentence):
        return "refers_back"
    pronoun = LEADING_PRONOUN.search(first_sentence)
    if pronoun and len(content_words(first_sentence[:pronoun.start()])) <= MAX_WORDS_BEFORE_PRONOUN:
        return "refers_back"  # "it" before anything it could stand for: "Can it be frozen and used later?"
    if own == 1 and BARE_VERB.search(message):
        return "no_object"
    return None


def conversation_hash(history: list[dict]) -> str:
    """A stable id of the earlier turns: requests continuing the same conversation share it."""
    turns = [[m.get("role"), m.get("content")] for m in history]
    return hashlib.sha256(json.dumps(turns, ensure_ascii=False).encode()).hexdigest()[:16]


def message_text(message: dict) -> str:
    """A chat message's text: its string content, or its text parts joined."""
    content = message.get("content")
    if isinstance(content, list):
        content = " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return content if isinstance(content, str) else ""


def check_history(history) -> list[dict]:
    """`history` as a list of {role, content} (earlier turns, oldest first); a DistillError naming
    what is wrong otherwise (the service answers it with a 400)."""
    if history is None:
        return []
    if not isinstance(history, list) or not all(isinstance(m, dict) and isinstance(m.get("role"), str)
                                                for m in history):
        raise DistillError("the conversation must be a list of {role, content} messages, oldest first")
    if len(history) > MAX_CONVERSATION_MESSAGES:
        raise DistillError(f"the conversation has {len(history)} earlier messages, over the "
                           f"{MAX_CONVERSATION_MESSAGES} a follow-up is read with; send the recent turns")
    return [{"role": m["role"], "content": message_text(m)} for m in history]


def standalone_turn(message: str, history: list[dict] | None = None,
                    condense: Callable[[list[dict]], str] | None = None,
                    shifted: Callable[[str, str], bool] | None = None,
                    agrees: Callable[[str, str], bool] | None = None) -> Turn:
    """`message` made standalone against `history` (the earlier messages, OpenAI-style, oldest
    first; system messages are ignored). `condense(messages) -> text` is an LLM's completion of
    a chat (None: the rule only). `shifted(alone, joined)`: whether the earlier turns' words move
    retrieval to another document, clearly better matched (the router asks its retriever); asked
    only of a message that refers back but names enough of its own to pass the word rules.
    `agrees(llm_question, joined)`: whether retrieval puts the same document first for the LLM's
    question as for the rule's; an LLM rewrite that does not agree does not count."""
    history = [m for m in check_history(history) if m["role"] in ("user", "assistant") and m["content"].strip()]
    if not any(m["role"] == "user" for m in history):
        return Turn(message, message, "none", conversation_hash(history) if history else None)
    digest = conversation_hash(history)
    own = set(content_words(message))
    recent = tuple(m["content"].strip() for m in history[-4:] if m["role"] == "user")
    named = dict.fromkeys(w for text in recent for w in content_words(text)
                          if w not in own)  # what the recent user turns named that the message does not
    joined = " ".join([message.strip(), *named])
    signal = depends_on_conversation(message)
    if signal is None and shifted is not None and named and refers_back(message) and shifted(message, joined):
        signal = "evidence_shift"
    if signal is None:
        return Turn(message, message, "none", digest)
    if condense is not None:
        rewritten = _condensed(message, history, condense)
        if rewritten and (agrees is None or agrees(rewritten, joined)):
            return Turn(rewritten, message, "llm", digest, signal)
    return Turn(joined, message, "rules", digest, signal, recent)


def refers_back(message: str) -> bool:
    """Whether the first sentence holds a word that may stand for something said before."""
    return bool(REFERS_BACK.search(DUMMY_SUBJECT.sub(" ", re.split(r"(?<=[?.!])\s+", message.strip())[0])))


def _condensed(message: str, history: list[dict], condense) -> str | None:
    """The LLM's standalone question, or None when it does not count: not one line, an answer
    instead of a question, or still referring back to the conversation."""
    shown = "\n".join(f"{m['role']}: {m['content'].strip()}" for m in history[-6:])
    try:
        text = condense([{"role": "system", "content": CONDENSE_PROMPT},
                         {"role": "user", "content": f"{shown}\nuser: {message.strip()}\n\nStandalone question:"}])
    except Exception:  # an LLM that is down or slow must not fail the turn: the rule still answers it
        return None
    lines = [line.strip() for line in (text or "").strip().splitlines() if line.strip()]
    if len(lines) != 1:
        return None
    question = re.sub(r"^(standalone question|question)\s*:\s*", "", lines[0], flags=re.I).strip().strip('"')
    if not question or len(question) > 4 * max(len(message), 40) or depends_on_conversation(question):
        return None
    if not (question.endswith("?") or ASKS.match(question)):
        return None  # an answer ("You can ask for a refund."), not the question
    if not set(content_words(question)) & set(content_words(message + " " + " ".join(m["content"] for m in history))):
        return None  # about nothing the conversation said
    return question
