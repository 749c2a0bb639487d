"""B14's peer: the two tables served by FastAPI + SQLAlchemy 2.0 async, as their docs teach.

What a FastAPI user writes instead of wf78's data routes: ``APIRouter`` per table, pydantic
models for the request and response bodies, SQLAlchemy 2.0 declarative models
(``DeclarativeBase``, ``Mapped``, ``mapped_column``), one ``create_async_engine`` and an
``async_sessionmaker`` (``expire_on_commit=False``, as SQLAlchemy's asyncio docs advise), a
``get_session`` dependency (``async with session_maker() as session: yield session``), an
``HTTPBearer`` dependency that resolves the caller's tenant, and in each endpoint
``session.add`` + ``commit`` + ``refresh`` to insert, ``session.get`` to read by id (another
tenant's row answers 404, like a missing one). Tables are made in the lifespan with
``Base.metadata.create_all``. Nothing is tuned beyond the database settings wf78 uses too:

* SQLite (``sqlite+aiosqlite``): ``journal_mode = WAL`` and ``synchronous = FULL`` set in a
  ``connect`` event (SQLAlchemy's documented way to run a PRAGMA on each connection), the
  dialect's default pool otherwise (``AsyncAdaptedQueuePool``: 5 connections + 10 overflow).
* MySQL (``mysql+aiomysql``, ``charset=utf8mb4``): ``pool_size=10, max_overflow=0``, the 10
  connections wf78's ``mysql`` source has at most; SQLAlchemy's default transaction handling
  (autocommit off: each request's session begins a transaction, commits or rolls back).

Settings come from the environment (like a ``pydantic-settings`` ``Settings`` would):
``B14_DATABASE_URL`` and ``B14_TABLE_PREFIX`` (the benchmark gives each run its own table
names). ``uvicorn benchmarks._fastapi_app:app`` serves it.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict
from sqlalchemy import String, Text, event, func
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

DATABASE_URL = os.environ.get("B14_DATABASE_URL", "sqlite+aiosqlite:///./b14.db")
TABLE_PREFIX = os.environ.get("B14_TABLE_PREFIX", "")
TOKEN = "bench-token-b14"


# -- database -----------------------------------------------------------------------------------

if DATABASE_URL.startswith("sqlite"):
    engine = create_async_engine(DATABASE_URL)

    @event.listens_for(engine.sync_engine, "connect")
    def set_sqlite_pragma(dbapi_connection: Any, connection_record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()

else:
    engine = create_async_engine(DATABASE_URL, pool_size=10, max_overflow=0)

session_maker = async_sessionmaker(engine, expire_on_commit=False)


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = f"{TABLE_PREFIX}items"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    qty: Mapped[int]
    price: Mapped[float]
    cid: Mapped[str] = mapped_column(String(64))
    upby: Mapped[str] = mapped_column(String(64))
    uptime: Mapped[datetime] = mapped_column(server_default=func.now())


class Log(Base):
    __tablename__ = f"{TABLE_PREFIX}logs"

    id: Mapped[int] = mapped_column(primary_key=True)
    level: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text)
    cid: Mapped[str] = mapped_column(String(64))
    upby: Mapped[str] = mapped_column(String(64))
    uptime: Mapped[datetime] = mapped_column(server_default=func.now())


async def get_session() -> AsyncIterator[AsyncSession]:
    async with session_maker() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]


# -- who is calling -----------------------------------------------------------------------------


class Tenant(BaseModel):
    uid: str
    cid: str
    uname: str


TOKENS = {TOKEN: Tenant(uid="u-bench", cid="bench", uname="bench")}
bearer = HTTPBearer()


async def get_tenant(
    credentials: Annotated[HTTPAuthorizationCredentials, Depends(bearer)],
) -> Tenant:
    tenant = TOKENS.get(credentials.credentials)
    if tenant is None:
        raise HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail="Invalid token",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return tenant


TenantDep = Annotated[Tenant, Depends(get_tenant)]


# -- request and response bodies ----------------------------------------------------------------


class ItemCreate(BaseModel):
    name: str
    qty: int
    price: float


class ItemRead(ItemCreate):
    model_config = ConfigDict(from_attributes=True)

    id: int
    upby: str
    uptime: datetime


class LogCreate(BaseModel):
    level: str
    message: str


class LogRead(LogCreate):
    model_config = ConfigDict(from_attributes=True)

    id: int
    upby: str
    uptime: datetime


# -- routes -------------------------------------------------------------------------------------

items = APIRouter(prefix="/items", tags=["items"])
logs = APIRouter(prefix="/logs", tags=["logs"])


@items.post("/", response_model=ItemRead, status_code=status.HTTP_201_CREATED)
async def create_item(item_in: ItemCreate, session: SessionDep, tenant: TenantDep) -> Item:
    item = Item(**item_in.model_dump(), cid=tenant.cid, upby=tenant.uname)
    session.add(item)
    await session.commit()
    await session.refresh(item)
    return item


@items.get("/{item_id}", response_model=ItemRead)
async def read_item(item_id: int, session: SessionDep, tenant: TenantDep) -> Item:
    item = await session.get(Item, item_id)
    if item is None or item.cid != tenant.cid:
        raise HTTPException(status_code=status.HTTP_404_NOT_FOUND, detail="Item not found")
    return item


@logs.post("/", response_model=LogRead, status_code=status.HTTP_201_CREATED)
async def create_log(log_in: LogCreate, session: SessionDep, tenant: TenantDep) -> Log:
    log = Log(**log_in.model_dump(), cid=tenant.cid, upby=tenant.uname)
    session.add(log)
    await session.commit()
    await session.refresh(log)
    return log


@logs.get("/{log_id}", response_model=LogRead)
async def read_log(log_id: int, session: SessionDep, tenant: TenantDep) -> Log:
    log = await session.get(Log, log_id)
    if log is None or log.cid != tenant.cid:
        raise HTTPException(status_code=status.HTTP_404_NOT_FOUND, detail="Log not found")
    return log


# -- the app ------------------------------------------------------------------------------------


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with engine.begin() as connection:
        await connection.run_sync(Base.metadata.create_all)
    yield
    await engine.dispose()


app = FastAPI(lifespan=lifespan)
app.include_router(items, prefix="/api/bench")
app.include_router(logs, prefix="/api/bench")
