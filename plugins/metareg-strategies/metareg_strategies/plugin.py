"""Registers the first-party strategies. Factories are lazy so `metareg list` stays light."""
import metareg


@metareg.hookimpl
def metareg_strategies():
    yield metareg.StrategySpec(
        "prototypicalnetworks",
        "metareg_strategies.protonet:PrototypicalNetworks",
        summary="Prototypical networks (Snell et al. 2017): nearest class mean in embedding space",
        aliases=("protonet",),
    )
