"""The dependency rule (precise / coarse per table), the walk over full `data`, argument binding."""

from __future__ import annotations

import pytest
from graphql import GraphQLError

from fraiseshm.errors import SchemaError
from fraiseshm.graphql.catalog import Catalog, ForeignKey, Table, View, parse_node_tree, _target_origin
from fraiseshm.graphql.check import examine
from fraiseshm.graphql.deps import Dependencies, bind
from fraiseshm.graphql.execute import bind_text
from fraiseshm.graphql.schema import build_served_schema

SDL = """
type Customer @view(name: "v_customer") { id: ID! name: String! orderCount: Int! }
type CustomerByName @view(name: "v_customer", orderBy: "name") { id: ID! name: String! }
type Product @view(name: "v_product") { id: ID! price: Float! categories: [Category!]! }
type Category @view(name: "v_category") { id: ID! name: String! }
type OrderItem { qty: Int! product: Product! }
type Order @view(name: "v_order") { id: ID! customer: Customer! items: [OrderItem!]! total: Float! }
type Query {
  customer(id: Int!): Customer
  customersByName(limit: Int = 20, offset: Int = 0): [CustomerByName!]!
  order(id: ID!): Order
  orders(limit: Int = 20, offset: Int = 0, customerId: Int): [Order!]!
}
"""


def _table(name: str, keys: tuple[str, ...] = ("id",), fks: tuple[ForeignKey, ...] = ()) -> Table:
    return Table(name, frozenset(keys), keys[0], fks, False, frozenset({"INSERT", "UPDATE", "DELETE", "TRUNCATE"}))


def _view(view: str, root: str, reads: tuple[str, ...], id_type: str = "integer", **columns: str) -> View:
    return View(view, "public." + view, "view", {"id": id_type, "data": "jsonb", **columns}, (root, "id"), "",
                reads, (), True)


def _catalog(order_fk_column: str = "id", item_product_fk: bool = True) -> Catalog:
    c = Catalog(kit_installed=True, definitions=b"defs")
    c.tables = {
        "public.customers": _table("public.customers"),
        "public.orders": _table("public.orders", fks=(ForeignKey("customer_id", "public.customers", "id"),)),
        "public.order_items": _table("public.order_items", fks=(
            ForeignKey("order_id", "public.orders", order_fk_column),
            *([ForeignKey("product_id", "public.products", "id")] if item_product_fk else []))),
        "public.products": _table("public.products"),
        "public.categories": _table("public.categories"),
        "public.product_categories": _table("public.product_categories", ("product_id",), fks=(
            ForeignKey("product_id", "public.products", "id"), ForeignKey("category_id", "public.categories", "id"))),
        "public.settings": _table("public.settings", ("k",)),
    }
    c.views = {
        "v_customer": _view("v_customer", "public.customers", ("public.customers", "public.orders"), name="text"),
        "v_product": _view("v_product", "public.products",
                           ("public.categories", "public.product_categories", "public.products"), id_type="text"),
        "v_category": _view("v_category", "public.categories", ("public.categories",)),
        "v_order": _view("v_order", "public.orders", ("public.customers", "public.order_items", "public.orders",
                                                      "public.products", "public.settings"),
                         id_type="bigint", customer_id="integer"),
    }
    return c


def _follows(served, name: str) -> dict[str, tuple[bool, str]]:
    return {f.table: (f.precise, f.why) for f in served.bindings[name].follows}


def test_tables_are_precise_only_where_a_change_reaches_a_recorded_row() -> None:
    served = build_served_schema(SDL)
    report = bind(served, _catalog())
    order = _follows(served, "Order")
    assert order["public.order_items"][0] and "order_id" in order["public.order_items"][1]  # FK to the order
    assert order["public.orders"][0] and order["public.customers"][0]  # own row; one-to-one customer
    assert order["public.products"][0]  # Product reached one-to-one from an item
    assert not order["public.settings"][0]  # no FK, no recorded row: coarse
    assert served.bindings["Order"].static == {
        "w:public.order_items", "w:public.orders", "w:public.customers", "w:public.products", "t:public.settings"}
    product = _follows(served, "Product")
    assert product["public.categories"][0] and "link table public.product_categories" in product["public.categories"][1]
    assert product["public.product_categories"][0]
    assert any("Order over public.v_order" in line and "coarse: public.settings" in line for line in report)


def test_an_fk_to_a_column_that_is_not_the_recorded_key_is_not_followed() -> None:
    served = build_served_schema(SDL)
    # order_items.order_id -> orders.pk, but order rows are tagged by id: the kit's parent tag cannot match
    bind(served, _catalog(order_fk_column="pk", item_product_fk=False))
    assert _follows(served, "Order")["public.order_items"][0] is False


def test_a_list_reached_type_without_an_fk_path_is_coarse() -> None:
    cat = _catalog()
    # categories listed under a product, but no link table: a new category could join the list unseen
    cat.views["v_product"] = _view("v_product", "public.products", ("public.categories", "public.products"), "text")
    served = build_served_schema(SDL)
    bind(served, cat)
    precise, why = _follows(served, "Product")["public.categories"]
    assert not precise and "listed without a foreign key" in why


def test_coarse_declared_in_the_sdl_wins_and_must_name_a_read_table() -> None:
    sdl = SDL.replace('@view(name: "v_customer")', '@view(name: "v_customer", coarse: ["public.orders"])')
    served = build_served_schema(sdl)
    bind(served, _catalog())
    assert _follows(served, "Customer")["public.orders"] == (False, "declared coarse in the SDL")
    assert "t:public.orders" in served.bindings["Customer"].static
    bad = build_served_schema(SDL.replace('@view(name: "v_customer")', '@view(name: "v_customer", coarse: ["x.y"])'))
    assert any("coarse names x.y" in p for p in examine(bad, _catalog()).problems)
    with pytest.raises(SchemaError):
        bind(bad, _catalog())


def test_two_types_over_one_view_share_their_tags_and_the_version_covers_the_views() -> None:
    served = build_served_schema(SDL)
    sdl_version = served.version
    bind(served, _catalog())
    assert served.bindings["Customer"].static == served.bindings["CustomerByName"].static
    assert served.version != sdl_version
    other = build_served_schema(SDL)
    changed = _catalog()
    changed.definitions = b"a view changed"
    bind(other, changed)
    assert other.version != served.version


def test_the_walk_records_every_object_of_the_full_data_not_what_was_selected() -> None:
    served = build_served_schema(SDL)
    bind(served, _catalog())
    deps = Dependencies(60.0, served)
    data = {"id": 8, "total": 9.5, "customer": {"id": 3, "name": "ann"},
            "items": [{"qty": 1, "product": {"id": "pen", "price": 2.5, "categories": [{"id": 4, "name": "x"}]}},
                      {"qty": 2, "product": {"id": "ink", "price": 4}}]}
    deps.rows(served.entities["Order"], [data], is_list=False, asked="8")
    assert {"r:public.orders:8", "r:public.customers:3", "r:public.products:pen", "r:public.products:ink",
            "r:public.categories:4"} <= deps.tags
    assert not any("Order" in t or "Customer" in t for t in deps.tags)  # tags never name GraphQL types
    lists = Dependencies(60.0, served)
    lists.rows(served.entities["Order"], [], is_list=True)
    assert "t:public.orders" in lists.tags


def test_node_tree_origin_of_a_view_column() -> None:
    text = ('({QUERY :commandType 1 :rtable <> :targetList ({TARGETENTRY :expr {VAR :varno 1 :varattno 2} '
            ':resno 1 :resname id :ressortgroupref 0 :resorigtbl 16452 :resorigcol 2 :resjunk false} '
            '{TARGETENTRY :expr {CONST :consttype 23 :constlen 4 :constbyval true :constisnull false '
            ':location -1 :constvalue 4 [ 1 0 0 0 0 0 0 0 ]} :resno 2 :resname na\\ me :ressortgroupref 0 '
            ':resorigtbl 0 :resorigcol 0 :resjunk false}) :colnames ("a" "b")})')
    tree = parse_node_tree(text)
    assert _target_origin(tree, "id") == (16452, 2)
    assert _target_origin(tree, "na me") == (0, 0)
    assert _target_origin(tree, "nope") is None


@pytest.mark.parametrize(("value", "pg_type", "text"), [
    (8, "integer", "8"), ("8", "bigint", "8"), ("5000000000", "bigint", "5000000000"),
    ("3F0C6B4E-8F4B-4C1A-9E59-2C3D4E5F6A7B", "uuid", "3f0c6b4e-8f4b-4c1a-9e59-2c3d4e5f6a7b"),
    ("abc", "text", "abc"), (True, "boolean", "true"), ("2.50", "numeric(10,2)", "2.50"),
])
def test_arguments_bind_as_the_text_of_their_column_type(value: object, pg_type: str, text: str) -> None:
    assert bind_text(value, pg_type, "order", "id") == text


@pytest.mark.parametrize(("value", "pg_type"), [
    ("abc", "integer"), ("99999999999", "integer"), ("1.5", "bigint"), (True, "integer"),
    ("not-a-uuid", "uuid"), ("maybe", "boolean"), ("x", "numeric"), ({"a": 1}, "text"),
])
def test_malformed_arguments_are_graphql_errors_naming_field_and_type(value: object, pg_type: str) -> None:
    with pytest.raises(GraphQLError, match=rf"order: argument id: .* is not a valid {pg_type}"):
        bind_text(value, pg_type, "order", "id")


@pytest.mark.parametrize(("sdl", "message"), [
    ('type A @view(name: "v") { id: ID! }\ntype Query {\n  a(x: Int): A\n}',
     "s.graphql:3: Query.a returns one A: its only argument must be id"),
    ('type A @view(name: "v") { id: ID! }\ntype Query { a(id: ID!): A }\ntype Mutation {\n\n  m(input: Int): A\n}',
     "s.graphql:5: Mutation.m needs @function(name: ...)"),
    ('type Query {\n  a: Int\n  b(: Int\n}', "s.graphql:3: Syntax Error"),
])
def test_sdl_errors_name_the_line_of_the_users_file(sdl: str, message: str) -> None:
    with pytest.raises(SchemaError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        build_served_schema(sdl, "s.graphql")


def test_a_security_invoker_view_over_row_level_security_is_never_shared() -> None:
    import dataclasses

    cat = _catalog()
    cat.tables["public.orders"] = dataclasses.replace(cat.tables["public.orders"], row_security=True)
    served = build_served_schema(SDL)
    warnings = examine(served, cat).warnings
    assert any("type Customer" in w and "public.orders, which has row-level security" in w
               and "@cache(private: true)" in w for w in warnings), warnings
    bind(served, cat)
    assert served.bindings["Customer"].per_identity and not served.bindings["Product"].per_identity
    deps = Dependencies(60.0, served)
    deps.rows(served.entities["Product"], [{"id": "pen", "price": 1, "categories": []}], is_list=False, asked="pen")
    assert not deps.private
    deps.rows(served.entities["Order"], [{"id": 8, "customer": {"id": 3}, "items": []}], is_list=False, asked="8")
    assert deps.private  # the order's view reads orders too, and its data holds a Customer
