"""The router: each route in the situation it is for, module selection, isolation, resident adapters."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest
import torch

from agent_memory import AgentMemory, MemoryConfig
from agent_memory.adapters import CorruptModuleError, ResidentAdapters
from agent_memory.backbone import Backbone
from agent_memory.config import BackboneConfig, RouterConfig
from agent_memory.errors import ConfigError, ValidationError
from agent_memory.registry import BackboneMismatchError, ModuleInfo
from agent_memory.router import POLICIES, Policy, RouteFeatures, RulePolicy, asks_for_a_date, make_policy, register_policy
from agent_memory.store import EpisodicStore
from agent_memory.types import Namespace

T0 = datetime(2023, 5, 2, 10, 0, tzinfo=timezone.utc)
OLD = Namespace("maria", "companion", "s1")
NOW = Namespace("maria", "companion", "s9")
DOG = "Big news: on Saturday I adopted a rescue dog named Biscuit."
CITY = "I just moved to Lisbon from Toronto last week."
CELLO = "My sister Ana plays the cello in an orchestra."
PEANUT = "Please remember I am allergic to peanuts."
WHEN_DOG = "When did Maria adopt Biscuit?"  # modules answer questions that ask for a date (the default policy)


@pytest.fixture
def memory(tmp_path, embedder, tiny):
    store = EpisodicStore.in_memory(embedder)
    config = MemoryConfig(home=str(tmp_path / "home"))
    return AgentMemory(store, tiny, config)


def make_module(memory, episodes, *, recall=1.0, weak=False, centroid=None, seed=0, rank=4) -> ModuleInfo:
    """A real peft module file (random non-zero LoRA) committed to the registry and marked as the episodes' owner.

    The recall is what a self-test would have stored; the router reads it from the manifest.
    """
    from peft import get_peft_model

    from agent_memory.consolidation.trainer import LoraSettings, lora_config

    backbone, registry = memory.backbone, memory.registry
    config = lora_config(LoraSettings(rank=rank, alpha=2 * rank))
    config.init_lora_weights = False
    torch.manual_seed(seed)
    scope = Namespace(episodes[0].namespace.user_id, episodes[0].namespace.agent_id)
    with registry.staging() as staged:
        peft_model = get_peft_model(backbone.model, config)
        peft_model.save_pretrained(str(staged))
        backbone.model = peft_model.unload()
        vectors = memory.store.embedder.embed([e.text for e in episodes])
        info = ModuleInfo(
            id=registry.new_id(), user_id=scope.user_id, agent_id=scope.agent_id,
            episode_ids=tuple(e.id for e in episodes), start=episodes[0].timestamp.isoformat(),
            end=episodes[-1].timestamp.isoformat(),
            centroid=tuple(centroid if centroid is not None else [sum(c) / len(vectors) for c in zip(*vectors)]),
            rank=rank, alpha=2 * rank, facts=len(episodes), examples=0, train_tokens=0, params=0, recall=recall,
            weak=weak, backbone=backbone.name, backbone_fingerprint=backbone.fingerprint,
            created_at=datetime.now(timezone.utc).isoformat(),
        )
        registry.commit(staged, info)
    memory.store.mark_absorbed(list(info.episode_ids), scope, info.id)
    return info


def add(memory, text, ns, day):
    return memory.add(text, ns, speaker="Maria", timestamp=T0 + timedelta(days=day))


# -- each route in its situation ----------------------------------------------------------------------
def test_none_when_memory_holds_nothing_relevant(memory):
    add(memory, DOG, OLD, 0)
    answer = memory.answer("What's 2+2?", NOW)
    assert answer.route == "none" and answer.modules == [] and answer.evidence == []
    assert "nothing relevant" in answer.reason


def test_rag_for_older_pending_episodes(memory):
    dog = add(memory, DOG, OLD, 0)
    add(memory, "Hello there.", NOW, 30)
    answer = memory.answer("What is the name of Maria's dog?", NOW)
    assert answer.route == "rag" and answer.evidence[0].episode.id == dog.id
    assert "no trusted module" in answer.reason


def test_icl_for_this_sessions_recent_turns(memory):
    add(memory, CELLO, OLD, 0)
    peanut = add(memory, PEANUT, NOW, 30)
    answer = memory.answer("What food is Maria allergic to?", NOW, k=1)
    assert answer.route == "icl"
    assert peanut.id in answer.to_dict()["recent"] and answer.evidence[0].episode.id == peanut.id
    assert "last" in answer.reason


def test_adapter_when_a_trusted_module_absorbed_the_evidence(memory):
    dog = add(memory, DOG, OLD, 0)
    info = make_module(memory, [dog])
    answer = memory.answer(WHEN_DOG, NOW, k=1)
    assert answer.route == "adapter" and answer.modules == [info.id]
    assert answer.evidence == [] and answer.decision.recent == ()
    question_only = memory.backbone.count_tokens(memory.backbone.qa_prompt(WHEN_DOG))
    assert answer.prompt_tokens == question_only, "no episode text in the prompt"
    assert answer.latency_ms["merge"] > 0, "the module's weights were applied while generating"
    # a question about content goes to retrieval by default, though the module holds the episode
    content = memory.answer("What is the name of Maria's dog?", NOW, k=1)
    assert content.route == "rag" and content.modules == [] and content.evidence[0].episode.id == dog.id
    assert "answer only questions that ask for a date" in content.reason


def test_adapter_plus_rag_for_evidence_not_absorbed_yet(memory):
    dog = add(memory, DOG, OLD, 0)
    info = make_module(memory, [dog])
    late = add(memory, "Biscuit the dog learned to sit yesterday.", Namespace("maria", "companion", "s2"), 5)
    answer = memory.answer(WHEN_DOG, NOW, k=2)
    assert answer.route == "adapter+rag" and answer.modules == [info.id]
    assert [h.episode.id for h in answer.evidence] == [late.id], "only what the module does not hold is retrieved"


def test_adapter_plus_icl_when_the_rest_is_in_this_session(memory):
    dog = add(memory, DOG, OLD, 0)
    info = make_module(memory, [dog])
    fresh = add(memory, "Biscuit the dog learned to sit this morning.", NOW, 30)
    answer = memory.answer(WHEN_DOG, NOW, k=2)
    assert answer.route == "adapter+icl" and answer.modules == [info.id]
    assert [h.episode.id for h in answer.evidence] == [fresh.id]


def test_weak_module_is_distrusted(memory):
    dog = add(memory, DOG, OLD, 0)
    make_module(memory, [dog], recall=0.1, weak=True)
    answer = memory.answer("What is the name of Maria's dog?", NOW, k=1)
    assert answer.route == "rag" and answer.modules == []
    assert "1 weak module(s) distrusted" in answer.reason


def test_the_trust_floor_can_be_moved_at_query_time_without_retraining(tmp_path, embedder, tiny):
    def memory_trusting(floor):
        config = MemoryConfig(home=str(tmp_path / f"home-{floor}"), router=RouterConfig(min_module_recall=floor))
        return AgentMemory(EpisodicStore.in_memory(embedder), tiny, config)

    question = WHEN_DOG
    lenient = memory_trusting(0.1)
    weak = make_module(lenient, [add(lenient, DOG, OLD, 0)], recall=0.1, weak=True)
    answer = lenient.answer(question, NOW, k=1)
    assert answer.route.startswith("adapter") and answer.modules == [weak.id], "recall 0.1 meets a 0.1 floor"
    strict = memory_trusting(0.9)
    make_module(strict, [add(strict, DOG, OLD, 0)], recall=0.8, weak=False)
    answer = strict.answer(question, NOW, k=1)
    assert answer.route == "rag" and "1 weak module(s) distrusted" in answer.reason, "0.8 is under a 0.9 floor"
    with pytest.raises(ConfigError, match="min_module_recall"):
        RouterConfig(min_module_recall=1.5)


def test_low_recall_module_is_backed_by_retrieval(memory):
    dog = add(memory, DOG, OLD, 0)
    info = make_module(memory, [dog], recall=0.6)
    answer = memory.answer(WHEN_DOG, NOW, k=1)
    assert answer.route == "adapter+rag" and answer.modules == [info.id]
    assert [h.episode.id for h in answer.evidence] == [dog.id] and "backs it up" in answer.reason


def test_centroid_fallback_when_retrieval_misses(memory):
    dog = add(memory, DOG, OLD, 0)
    question = "When was the zxq vortex quibble?"
    info = make_module(memory, [dog], centroid=memory.store.embedder.embed([question])[0])
    memory.router.config = RouterConfig(min_score=0.9)  # retrieval counts nothing as evidence
    answer = memory.answer(question, NOW, k=1)
    assert answer.route == "adapter" and answer.modules == [info.id] and "centroid" in answer.reason


def test_a_recorded_question_does_not_crowd_out_the_statement_that_answers_it(memory):
    """Agents record every turn: asking again retrieves the earlier asking first (cosine 1.0 vs 0.68 here)."""
    fact = add(memory, "My dog is called Biscuit.", OLD, 0)
    asked = add(memory, "What is my dog called?", Namespace("maria", "companion", "s5"), 5)
    decision = memory.router.decide("What is my dog called?", NOW, 5)
    scores = {h.episode.id: h.score for h in decision.retrieved}
    assert scores[asked.id] - scores[fact.id] > memory.config.router.relevance_margin, "the case the rule is for"
    assert decision.route == "rag" and fact.id in [h.episode.id for h in decision.evidence]
    assert decision.features.asks_when == 0 and memory.router.decide(" When did I get my dog?", NOW, 5).features.asks_when == 1
    add(memory, "Did I tell you where I moved?", Namespace("zoe", "companion", "s1"), 1)
    only_questions = memory.router.decide("Did I tell you where I moved?", Namespace("zoe", "companion", "s2"), 5)
    assert only_questions.features.relevant == 1, "with no statement retrieved, the best question anchors the margin"


def test_provenance_picks_the_modules_that_absorbed_the_top_hits(memory):
    dog, city, cello = (add(memory, t, OLD, i) for i, t in enumerate([DOG, CITY, CELLO]))
    m_dog = make_module(memory, [dog], seed=1)
    m_city = make_module(memory, [city], seed=2)
    make_module(memory, [cello], seed=3)
    question = "When: Maria's move to Lisbon and her dog Biscuit"
    by_default = memory.router.decide(question, OLD, 3)
    assert by_default.route.startswith("adapter") and len(by_default.modules) == 1, "one module unless told to merge"
    assert by_default.modules[0] in {m_dog.id, m_city.id}
    # the other module's episode is not lost: it goes into the prompt (here as a recent turn) beside the module
    left_out = dog if by_default.modules[0] == m_city.id else city
    assert by_default.route == "adapter+icl" and left_out.id in [h.episode.id for h in by_default.evidence]
    memory.router.config = replace(memory.router.config, max_modules=2)
    answer = memory.answer(question, OLD, k=3)
    assert set(answer.modules) == {m_dog.id, m_city.id}
    assert memory.adapters._combos, "two modules are merged (and the merge cached)"


def test_corrupt_module_falls_back_to_retrieval_with_the_reason(memory):
    dog = add(memory, DOG, OLD, 0)
    info = make_module(memory, [dog])
    (memory.registry.path(info) / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    answer = memory.answer(WHEN_DOG, NOW, k=1)
    assert answer.route == "rag" and answer.modules == [] and answer.evidence[0].episode.id == dog.id
    assert "module unusable" in answer.reason and info.id in answer.reason


# -- isolation ----------------------------------------------------------------------------------------
def test_a_question_in_one_namespace_never_activates_anothers_modules(memory):
    mine, theirs = Namespace("alice", "bot", "s1"), Namespace("bob", "bot", "s1")
    texts = [DOG, CITY, CELLO, PEANUT]
    alice = {make_module(memory, [add(memory, t, mine, i)], seed=i).id for i, t in enumerate(texts)}
    bob = {make_module(memory, [add(memory, t, theirs, i)], seed=10 + i).id for i, t in enumerate(texts)}
    rng = random.Random(0)
    for _ in range(12):
        q = rng.choice(["dog", "Lisbon", "cello", "peanuts", "Biscuit Toronto", "orchestra"])
        for ns, own, other in ((mine, alice, bob), (theirs, bob, alice)):
            for route in (None, "adapter", "adapter+rag"):
                decision = memory.router.decide(q, ns, 4, route=route)
                assert set(decision.modules) <= own and not set(decision.modules) & other
                assert all(h.episode.namespace.user_id == ns.user_id for h in decision.retrieved)


# -- policies -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("features,route", [
    (RouteFeatures(top_score=0.1), "none"),
    (RouteFeatures(top_score=0.6, relevant=2), "rag"),
    (RouteFeatures(top_score=0.6, relevant=2, relevant_in_recent=2, recent_turns=4), "icl"),
    (RouteFeatures(top_score=0.6, relevant=1, relevant_absorbed=1, provenance_modules=1, module_recall=1.0, asks_when=1),
     "adapter"),
    (RouteFeatures(top_score=0.6, relevant=1, relevant_absorbed=1, provenance_modules=1, module_recall=1.0), "rag"),
    (RouteFeatures(top_score=0.6, relevant=2, relevant_absorbed=1, provenance_modules=1, module_recall=1.0, asks_when=1),
     "adapter+rag"),
    (RouteFeatures(top_score=0.6, relevant=2, relevant_absorbed=1, relevant_in_recent=1, provenance_modules=1,
                   module_recall=1.0, asks_when=1), "adapter+icl"),
    (RouteFeatures(top_score=0.1, centroid_best=0.8, module_recall=1.0, asks_when=1), "adapter"),
])
def test_rule_policy_table(features, route):
    assert RulePolicy().decide(features)[0] == route


def test_modules_can_be_kept_for_questions_that_ask_when():
    absorbed = dict(top_score=0.6, relevant=2, relevant_absorbed=2, provenance_modules=1, module_recall=1.0)
    dates = RulePolicy()
    assert dates.modules_for_when_only, "on by default"
    assert dates.decide(RouteFeatures(**absorbed, asks_when=1))[0] == "adapter"
    route, reason = dates.decide(RouteFeatures(**absorbed))
    assert route == "rag" and "hold 2 of them but answer only questions that ask for a date" in reason
    assert dates.decide(RouteFeatures(top_score=0.1, centroid_best=0.8, module_recall=1.0))[0] == "none"
    assert RulePolicy(modules_for_when_only=False).decide(RouteFeatures(**absorbed))[0] == "adapter"
    # fitted on samples where the modules win on dates only, the fit turns it on; where they win on content too, off
    samples = [(RouteFeatures(**absorbed, asks_when=1), {"adapter": 1.0, "rag": 0.2})] * 2
    content = [(RouteFeatures(**absorbed), {"adapter": 0.0, "rag": 0.6})] * 2
    fitted = RulePolicy(modules_for_when_only=False).fit(samples + content)
    assert fitted.modules_for_when_only and fitted._value(samples + content) == 0.8
    content = [(RouteFeatures(**absorbed), {"adapter": 0.9, "rag": 0.6})] * 2
    assert not RulePolicy().fit(samples + content).modules_for_when_only


@pytest.mark.parametrize("question, asks", [
    ("When did Caroline go to the LGBTQ support group?", True),
    ("  when is the concert?", True),
    ("How long has Melanie been practicing art?", False),  # a duration
    ("What year did John start surfing?", True),
    ("In which month's game did John score a career high?", True),
    ("Which week did Tim visit the UK?", True),
    ("How many weeks passed between adopting Coco and Shadow?", False),
    ("On what day did Tim get into his study abroad program?", True),
    ("What did Maria say about Biscuit?", False),
    ("Who did Maria have dinner with on May 3, 2023?", False),  # names a date, asks who
    ("How many dogs does Maria have?", False),
    ("Whenever I call, who answers?", False),
    ("What timezone is Tim in?", False),
])
def test_a_question_asks_for_a_date_by_its_opening_words(question, asks):
    assert asks_for_a_date(question) is asks


def test_rule_policy_fits_its_thresholds_on_labelled_samples():
    # on this dev set retrieval scores of 0.25 are noise: "none" is right there, "rag" only at 0.45
    samples = [(RouteFeatures(top_score=0.25, relevant=1), {"none": 1.0, "rag": 0.0})] * 3
    samples += [(RouteFeatures(top_score=0.45, relevant=1), {"none": 0.0, "rag": 1.0})] * 3
    policy = RulePolicy()
    assert policy._value(samples) == 0.5
    policy.fit(samples)
    assert 0.25 < policy.rag_min <= 0.45 and policy._value(samples) == 1.0
    assert (policy.centroid_min, policy.trust_recall) == (0.45, 0.9), "no sample has a module: those thresholds stay"
    with pytest.raises(ValidationError):
        policy.fit([])


def test_policies_register_themselves_and_configs_validate():
    @register_policy("always-rag-test")
    class AlwaysRag(Policy):
        def decide(self, f):
            return "rag", "always"

    assert POLICIES["always-rag-test"] is AlwaysRag and make_policy("always-rag-test").decide(RouteFeatures())[0] == "rag"
    assert RouterConfig(policy="always-rag-test").policy == "always-rag-test"
    with pytest.raises(ConfigError, match="policy"):
        RouterConfig(policy="nope")
    with pytest.raises(ConfigError, match="max_modules"):
        RouterConfig(max_modules=0)
    with pytest.raises(ConfigError, match="rag_mi"):
        RouterConfig(policy_params={"rag_mi": 0.3})


def test_forced_route_must_be_known(memory):
    with pytest.raises(ValidationError, match="route"):
        memory.answer("hi", NOW, route="telepathy")


# -- resident adapters --------------------------------------------------------------------------------
def test_merged_weights_match_peft_and_are_restored_exactly(memory):
    from peft import PeftModel

    dog = add(memory, DOG, OLD, 0)
    info = make_module(memory, [dog])
    backbone = memory.backbone
    ids = backbone.tokenizer("what is the dog name", return_tensors="pt")["input_ids"]
    before = {n: p.detach().clone() for n, p in backbone.model.named_parameters()}
    adapters = ResidentAdapters(backbone, memory.registry)
    adapters.activate([info])
    with torch.no_grad(), adapters.merged() as merge_ms:
        ours = backbone.model(ids).logits
    assert merge_ms > 0
    assert all(torch.equal(p, before[n]) for n, p in backbone.model.named_parameters()), "restored exactly"
    peft_model = PeftModel.from_pretrained(backbone.model, str(memory.registry.path(info)))
    with torch.no_grad():
        reference = peft_model(ids).logits
    backbone.model = peft_model.unload()
    assert not torch.allclose(reference, backbone.model(ids).logits), "the module changes the output"
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-4)


def test_cat_combination_is_the_scaled_sum_of_updates(memory):
    a, b = add(memory, DOG, OLD, 0), add(memory, CITY, OLD, 1)
    m1, m2 = make_module(memory, [a], seed=1), make_module(memory, [b], seed=2)
    adapters = ResidentAdapters(memory.backbone, memory.registry, combination="cat")
    adapters.activate([m1, m2])
    (name, (a_cat, b_cat)), = list(adapters._factors(adapters.active).items())[:1]
    (a1, b1), (a2, b2) = adapters._resident[m1.id].factors[name], adapters._resident[m2.id].factors[name]
    torch.testing.assert_close(b_cat @ a_cat, (b1 @ a1 + b2 @ a2) / 2 ** 0.5)
    ties = ResidentAdapters(memory.backbone, memory.registry)  # default TIES keeps the rank
    ties.activate([m1, m2])
    a_t, b_t = ties._factors(ties.active)[name]
    assert a_t.shape == a1.shape and b_t.shape == b1.shape
    with pytest.raises(ValidationError, match="combination"):
        ResidentAdapters(memory.backbone, memory.registry, combination="sum")


def test_resident_set_is_bounded_and_switching_never_reloads(memory):
    episodes = [add(memory, t, OLD, i) for i, t in enumerate([DOG, CITY, CELLO])]
    infos = [make_module(memory, [e], seed=i) for i, e in enumerate(episodes)]
    adapters = ResidentAdapters(memory.backbone, memory.registry, capacity=2)
    adapters.preload(infos[:2])
    first = adapters._resident[infos[0].id]
    adapters.activate([infos[1]])
    adapters.activate([infos[0]])
    assert adapters._resident[infos[0].id] is first, "switching back reuses the resident copy"
    adapters.activate([infos[2]])
    assert adapters.resident == [infos[0].id, infos[2].id], "least recently used one is dropped"


def test_module_from_another_backbone_is_refused(memory, tiny_model_dir):
    dog = add(memory, DOG, OLD, 0)
    info = make_module(memory, [dog])
    other = Backbone.load(BackboneConfig(model=str(tiny_model_dir), dtype="float32"))
    with torch.no_grad():
        next(other.model.parameters()).add_(1.0)
    other._fingerprint = None
    with pytest.raises(BackboneMismatchError):
        ResidentAdapters(other, memory.registry).load(info)
    (memory.registry.path(info) / "adapter_config.json").unlink()
    with pytest.raises(CorruptModuleError, match="consolidate again"):
        ResidentAdapters(memory.backbone, memory.registry).load(info)


def test_answers_from_parallel_threads_match_serial_ones(memory):
    """Each answer merges its own modules into the shared weights; threads must never see each other's."""
    from concurrent.futures import ThreadPoolExecutor

    dog = make_module(memory, [add(memory, DOG, OLD, 0)], seed=1)
    city = make_module(memory, [add(memory, CITY, Namespace("maria", "travel", "s1"), 1)], seed=2)
    asks = [(WHEN_DOG, NOW), ("When did Maria move to Lisbon?", Namespace("maria", "travel", "s9"))] * 4
    serial = [memory.answer(q, ns, k=1, max_new_tokens=6) for q, ns in asks[:2]]
    assert [a.modules for a in serial] == [[dog.id], [city.id]]
    assert serial[0].text != serial[1].text, "the two modules steer the tiny model differently"
    before = {n: p.detach().clone() for n, p in memory.backbone.model.named_parameters()}
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda qa: memory.answer(qa[0], qa[1], k=1, max_new_tokens=6), asks))
    assert [a.text for a in parallel] == [a.text for a in serial] * 4
    assert all(torch.equal(p, before[n]) for n, p in memory.backbone.model.named_parameters()), "weights restored"


def test_max_new_tokens_bounds_the_answer_per_call(memory):
    add(memory, DOG, OLD, 0)
    short = memory.answer("What is the name of Maria's dog?", NOW, route="rag", max_new_tokens=2)
    assert 0 < memory.backbone.count_tokens(short.text) <= 2
    with pytest.raises(ValidationError, match="max_new_tokens"):
        memory.answer("What is the name of Maria's dog?", NOW, max_new_tokens=0)
