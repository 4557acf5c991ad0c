"""Registers the first-party strategies. Factories are lazy so `metareg list` stays light."""
import metareg

# Every first-party strategy trains and evaluates on padded batches of variable episodes
# (`--episodes variable`; the supervised baseline evaluates on them).
VARIABLE = frozenset({"episodes:variable"})


@metareg.hookimpl
def metareg_strategies():
    yield metareg.StrategySpec(
        "prototypicalnetworks",
        "metareg_strategies.protonet:PrototypicalNetworks",
        summary="Prototypical networks (Snell et al. 2017): nearest class mean in embedding space",
        aliases=("protonet",),
        provides=VARIABLE,
    )
    yield metareg.StrategySpec(
        "maml",
        "metareg_strategies.maml:MAML",
        summary="MAML (Finn et al. 2017), second order, batched over episodes with torch.func; Meta-SGD option",
        # The inner loop runs the backbone under torch.func (vmap over episodes, grad of grad): a backbone
        # whose forward writes state (running statistics through F.batch_norm, counters) cannot work.
        requires={"backbone:functional"},
        provides=VARIABLE,
    )
    yield metareg.StrategySpec(
        "anil",
        "metareg_strategies.anil:ANIL",
        summary="ANIL (Raghu et al. 2020): MAML that adapts only the linear head",
        provides=VARIABLE,
    )
    yield metareg.StrategySpec(
        "metaoptnet",
        "metareg_strategies.metaoptnet:MetaOptNet",
        summary="MetaOptNet (Lee et al. 2019): differentiable SVM or ridge regression on the embeddings",
        provides=VARIABLE,
    )
    yield metareg.StrategySpec(
        "default",
        "metareg_strategies.supervised:Supervised",
        summary="Supervised baseline: linear head on all training classes, nearest class mean at test time",
        provides=VARIABLE,
        aliases=("supervised", "baseline"),
    )
