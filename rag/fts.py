"""Full-text search over course chunks (`content`) and over one student's own turns
(`interactions`), on the indexes of migration 0002: PostgreSQL's `search` tsvector column, or
SQLite's FTS5 tables. Anything a student says or types is a safe query.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import Integer, column, text
from sqlalchemy.ext.asyncio import AsyncSession

from store.models import Interaction

# Words only: quotes, operators, `^`, `*`, `:` and the like never reach either query parser.
_WORD = re.compile(r"\w+")
MAX_TERMS = 32  # a pasted page as a "question" must not become a thousand-term OR

# PostgreSQL's 'english' configuration drops these; FTS5 has no stop words, so they are dropped
# here too. Both backends then find the same rows, and "what is the ..." does not match every
# chunk that contains "the". (The Snowball English list, as PostgreSQL ships it.)
STOP_WORDS = frozenset("""
a about above after again against all am an and any are as at be because been before being
below between both but by can did do does doing don down during each few for from further had
has have having he her here hers herself him himself his how i if in into is it its itself just
me more most my myself no nor not now of off on once only or other our ours ourselves out over
own s same she should so some such t than that the their theirs them themselves then there
these they this those through to too under until up very was we were what when where which
while who whom why will with you your yours yourself yourselves
""".split())


def terms(query: str) -> list[str]:
    """The query's distinct words, lower-cased, in order, without stop words."""
    seen: dict[str, None] = {}
    for word in _WORD.findall(query.lower()):
        if word not in STOP_WORDS and word.strip("_"):
            seen.setdefault(word, None)
    return list(seen)[:MAX_TERMS]


def fts5_query(query: str) -> str:
    """An FTS5 MATCH expression: each word as a quoted string, OR-ed. Quoted, a word is never an
    operator (AND, NEAR, a column filter); OR, because a spoken question rarely uses every word
    of the passage that answers it (bm25 still ranks chunks with more of them first)."""
    return " OR ".join(f'"{t}"' for t in terms(query))


def websearch_query(query: str) -> str:
    """Input for PostgreSQL's websearch_to_tsquery (which never raises): the same words, OR-ed
    for the same reason as in fts5_query."""
    return " or ".join(terms(query))


async def fts_search(session: AsyncSession, query: str, *, course: str | None,
                     limit: int, with_rows: bool = False) -> list[Any]:
    """(content id, score), best first. Scores are higher-is-better on both backends but only
    comparable within one backend (ts_rank_cd vs. negated bm25); fusion uses the ranks.
    `with_rows`: rows with id, score, course, source, heading_path and text instead, saving a
    round trip on the live path."""
    if limit <= 0 or not terms(query):
        return []
    params: dict[str, object] = {"limit": limit}
    if _dialect(session) == "postgresql":
        params["q"] = websearch_query(query)
        sql = (f"SELECT c.id, ts_rank_cd(c.search, q, 1) AS score{_CONTENT if with_rows else ''} "
               "FROM content c, websearch_to_tsquery('english', :q) q WHERE c.search @@ q")
        if course is not None:
            sql += " AND c.course = :course"
            params["course"] = course
        sql += " ORDER BY score DESC, c.id LIMIT :limit"
    else:
        sql, params = sqlite_content_sql(query, course=course, limit=limit, with_rows=with_rows)
    rows = (await session.execute(text(sql), params)).all()
    return rows if with_rows else [(int(i), float(s)) for i, s, *_ in rows]


def sqlite_content_sql(query: str, *, course: str | None, limit: int, with_rows: bool
                       ) -> tuple[str, dict[str, object]]:
    """SQLite's full-text query over `content` (named parameters): also what the in-memory
    course mirror (`rag.mirror`) runs, so both rank alike."""
    params: dict[str, object] = {"limit": limit, "q": fts5_query(query)}
    # The join drops any index entry whose row is gone, should the index ever lag.
    sql = (f"SELECT c.id, -bm25(fts_content) AS score{_CONTENT if with_rows else ''} "
           "FROM fts_content JOIN content c ON c.id = fts_content.rowid "
           "WHERE fts_content MATCH :q")
    if course is not None:
        sql += " AND c.course = :course"
        params["course"] = course
    return sql + " ORDER BY score DESC, c.id LIMIT :limit", params


async def memory_search(session: AsyncSession, query: str, *, user_id: str,
                        limit: int, with_rows: bool = False) -> list[Any]:
    """(interaction id, score) among `user_id`'s own turns only, best first. Their notes
    (study.notes) are rows of the same table and index, so they are found here too.

    A privacy boundary: the user filter is part of the SQL, never applied afterwards, so another
    student's words cannot come back however the ranking goes."""
    if not user_id:
        raise ValueError("memory_search needs the user whose turns to search")
    if limit <= 0 or not terms(query):
        return []
    params: dict[str, object] = {"user_id": user_id, "limit": limit}
    if _dialect(session) == "postgresql":
        params["q"] = websearch_query(query)
        sql = (f"SELECT i.id, ts_rank_cd(i.search, q, 1) AS score{_TURN if with_rows else ''} "
               "FROM interactions i, websearch_to_tsquery('english', :q) q "
               "WHERE i.user_id = :user_id AND i.search @@ q")
        sql += " ORDER BY score DESC, i.id DESC LIMIT :limit"  # ties: the more recent turn
    else:
        sql, params = sqlite_memory_sql(query, user_id=user_id, limit=limit, with_rows=with_rows)
    rows = (await session.execute(text(sql), params)).all()
    return rows if with_rows else [(int(i), float(s)) for i, s, *_ in rows]


def sqlite_memory_sql(query: str, *, user_id: str, limit: int, with_rows: bool
                      ) -> tuple[str, dict[str, object]]:
    """SQLite's memory query (named parameters; the user filter in it): also what
    `rag.reader.SqliteReader` runs in its thread."""
    if not user_id:
        raise ValueError("memory_search needs the user whose turns to search")
    params: dict[str, object] = {"user_id": user_id, "limit": limit, "q": fts5_query(query)}
    sql = (f"SELECT i.id, -bm25(fts_interactions) AS score{_TURN if with_rows else ''} "
           "FROM fts_interactions JOIN interactions i ON i.id = fts_interactions.rowid "
           "WHERE fts_interactions MATCH :q AND i.user_id = :user_id")
    return sql + " ORDER BY score DESC, i.id DESC LIMIT :limit", params  # ties: the more recent


def interactions_matching(session: AsyncSession, query: str) -> Any:
    """A WHERE clause on `Interaction`: the rows whose words match `query` (any of its words,
    stemmed), by the index memory_search uses. `query` must have `terms`."""
    if _dialect(session) == "postgresql":
        return text("interactions.search @@ websearch_to_tsquery('english', :q)").bindparams(
            q=websearch_query(query))
    matching = (text("SELECT rowid FROM fts_interactions WHERE fts_interactions MATCH :q")
                .bindparams(q=fts5_query(query)).columns(column("rowid", Integer)))
    return Interaction.id.in_(matching)


_CONTENT = ", c.course, c.source, c.heading_path, c.text"
_TURN = ", i.transcript, i.answer, i.created_at, i.kind"  # kind: a note is rendered apart


def _dialect(session: AsyncSession) -> str:
    return session.get_bind().dialect.name
