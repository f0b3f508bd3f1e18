"""The shop example (examples/shop): integer keys, computed values, a many-to-many.

Ownership (see harness.py: one writer per key): writer w owns the customers
and products whose position is w modulo the number of writers, the ones it
creates, every order and order item of its customers, every link row
(product_categories) of its products, and the categories at positions w mod n.
Items reference any writer's products, so a price change by one writer
changes the totals of other writers' orders: that derived dependency (and a
new order changing its customer's order count, a link row changing a
category's product list) is what this example tests. Products are never
deleted (order_items reference them without ON DELETE CASCADE); customers
are deleted only when the writer created them.

Writes, through a mutation or plain SQL at random (SQL only where the example
has no mutation: order status, item quantity, item delete, category rename,
customer delete):
    customers   create, rename, delete
    products    create (with categories), reprice, rename, set categories
    categories  rename
    orders      create (with items), delete, set status
    order items add, change quantity, delete
Computed values checked: Order.total = sum(quantity * current price) of its
items, OrderItem.lineTotal, Customer.orderCount, Category.productCount.
"""

from __future__ import annotations

import random
from decimal import Decimal
from typing import Any

import asyncpg
import httpx

from tests.coherency.harness import Fact, History, Image, Members, Obj, Read, Total, Window, Workload, graphql, now

CUSTOMER = "query($id: ID!) { customer(id: $id) { id name email createdAt orderCount } }"
ORDER = ("query($id: ID!) { order(id: $id) { id status createdAt total customer { id name email } "
         "items { id quantity lineTotal product { id name price } } } }")
ORDER_TOTAL = "query($id: ID!) { order(id: $id) { id total } }"
ORDERS_OF = "query($c: ID!) { orders(customerId: $c, limit: 100) { id status createdAt total } }"
# RecentOrder: a second GraphQL type over v_order, newest first
RECENT_OF = "query($c: ID!) { recentOrders(customerId: $c, limit: 100) { id createdAt total customer { id name } } }"
RECENT = "query($id: ID!) { recentOrder(id: $id) { id status total items { id quantity product { id price } } } }"
CUSTOMERS_PAGE = "query($o: Int!) { customers(limit: 5, offset: $o) { id name createdAt orderCount } }"
PRODUCTS_PAGE = "query($o: Int!) { products(limit: 5, offset: $o) { id name price createdAt } }"
ORDERS_PAGE = "query($o: Int!) { orders(limit: 6, offset: $o) { id createdAt total customer { id } } }"
CATEGORY = "query($id: ID!) { category(id: $id) { id name productCount products { id name price } } }"
PRODUCT = "query($id: ID!) { product(id: $id) { id name price createdAt categories { id name } } }"

MUTATION = "mutation($input: {t}!) {{ {f}(input: $input) {{ success errors {{ message }} data {{ {d} }} }} }}"
ORDER_DATA = "id createdAt items { id quantity product { id } }"


def _m(field: str, input_type: str, data: str = "id") -> tuple[str, str]:
    return field, MUTATION.format(t=input_type, f=field, d=data)


CREATE_CUSTOMER = _m("createCustomer", "CreateCustomerInput", "id createdAt")
UPDATE_CUSTOMER = _m("updateCustomer", "UpdateCustomerInput")
CREATE_PRODUCT = _m("createProduct", "CreateProductInput", "id createdAt")
UPDATE_PRODUCT = _m("updateProduct", "UpdateProductInput")
SET_CATEGORIES = _m("setProductCategories", "SetProductCategoriesInput")
CREATE_ORDER = _m("createOrder", "CreateOrderInput", ORDER_DATA)
ADD_ITEM = _m("addOrderItem", "AddOrderItemInput", ORDER_DATA)
DELETE_ORDER = _m("deleteOrder", "DeleteOrderInput")


def cents(value: Any) -> int:
    return int((Decimal(str(value)) * 100).to_integral_value())


async def _mutate(client: httpx.AsyncClient, mutation: tuple[str, str], input: dict[str, Any]) -> Any:  # noqa: A002
    field, query = mutation
    data, _ = await graphql(client, query, {"input": input})
    result = data[field]
    if not result["success"]:
        raise RuntimeError(f"{field}({input}) failed: {result['errors']}")
    return result["data"]


Changes = list[tuple[str, str, Image]]


class ShopWriter:
    """One writer's domain (its rows' current images) and its writes."""

    def __init__(self, n: int, use_mutations: bool, use_sql: bool, categories: list[str]) -> None:
        self.n = n
        self.paths = [p for p, on in (("mutation", use_mutations), ("sql", use_sql)) if on]
        self.rows: dict[str, dict[str, dict[str, Any]]] = {
            k: {} for k in ("customer", "product", "category", "link", "order", "item")}
        self.all_categories = categories  # any writer's: links may name them
        self.all_products: list[str] = []  # any writer's: items may reference them (shared, never deleted)
        self.created_customers: set[str] = set()
        self.counter = 0

    def _label(self, what: str) -> str:
        self.counter += 1
        return f"{what} w{self.n} #{self.counter}"

    def _price(self, rng: random.Random) -> int:
        return rng.randrange(100, 100000)  # cents

    async def __call__(self, client: httpx.AsyncClient, conn: asyncpg.Connection, rng: random.Random,
                       history: History) -> None:
        ops = {  # op: (weight, has a mutation)
            self.reprice: (4, True), self.rename_product: (1, True), self.set_categories: (2, True),
            self.create_product: (1, True), self.rename_customer: (2, True), self.create_customer: (1, True),
            self.delete_customer: (1, False), self.create_order: (2, True), self.delete_order: (1, True),
            self.set_status: (1, False), self.add_item: (2, True), self.change_quantity: (2, False),
            self.delete_item: (1, False), self.rename_category: (1, False),
        }
        if "sql" not in self.paths:
            ops = {op: wm for op, wm in ops.items() if wm[1]}
        op = rng.choices(list(ops), [w for w, _ in ops.values()])[0]
        path = rng.choice(self.paths) if ops[op][1] else "sql"
        sent = now()
        changes = await op(client, conn, rng, path)
        if changes is None:
            return
        history.record(changes, sent, now(), path)
        for kind, key, image in changes:
            if image is None:
                self.rows[kind].pop(key, None)
            else:
                self.rows[kind][key] = image

    def _pick(self, rng: random.Random, kind: str) -> str | None:
        keys = sorted(self.rows[kind], key=int if kind != "link" else str)
        return rng.choice(keys) if keys else None

    # --- customers -------------------------------------------------------------

    async def rename_customer(self, client, conn, rng, path) -> Changes | None:  # noqa: ANN001
        cid = self._pick(rng, "customer")
        if cid is None:
            return None
        name = self._label("customer")
        if path == "mutation":
            await _mutate(client, UPDATE_CUSTOMER, {"id": cid, "name": name})
        else:
            await conn.execute("UPDATE customers SET name = $2 WHERE id = $1", int(cid), name)
        return [("customer", cid, {**self.rows["customer"][cid], "name": name})]

    async def create_customer(self, client, conn, rng, path) -> Changes | None:  # noqa: ANN001
        if len(self.created_customers) >= 4:
            # no mutation deletes a customer: without plain SQL, stop creating
            return await self.delete_customer(client, conn, rng, path) if path == "sql" else None
        name = self._label("customer")
        email = f"w{self.n}.{self.counter}.{rng.randrange(10**9)}@coherency.test"
        if path == "mutation":
            data = await _mutate(client, CREATE_CUSTOMER, {"name": name, "email": email})
            cid, created = str(data["id"]), data["createdAt"]
        else:
            row = await conn.fetchrow("INSERT INTO customers (name, email) VALUES ($1, $2)"
                                      " RETURNING id, fraiseshm.iso8601(created_at) AS c", name, email)
            cid, created = str(row["id"]), row["c"]
        self.created_customers.add(cid)
        return [("customer", cid, {"id": cid, "name": name, "email": email, "createdAt": created})]

    async def delete_customer(self, client, conn, rng, path) -> Changes | None:  # noqa: ANN001
        alive = sorted(self.created_customers)
        if not alive:
            return None
        cid = rng.choice(alive)
        orders = [o for o, im in self.rows["order"].items() if im["customer"] == cid]
        items = [i for i, im in self.rows["item"].items() if im["order"] in orders]
        await conn.execute("DELETE FROM customers WHERE id = $1", int(cid))  # orders and items by ON DELETE CASCADE
        self.created_customers.discard(cid)
        return ([("customer", cid, None)] + [("order", o, None) for o in orders]
                + [("item", i, None) for i in items])

    # --- products and categories -------------------------------------------------

    async def reprice(self, client, conn, rng, path) -> Changes | None:  # noqa: ANN001
        pid = self._pick(rng, "product")
        if pid is None:
            return None
        price = self._price(rng)
        if path == "mutation":
            await _mutate(client, UPDATE_PRODUCT, {"id": pid, "price": f"{price / 100:.2f}"})
        else:
            await conn.execute("UPDATE products SET price = $2 WHERE id = $1", int(pid), Decimal(price) / 100)
        return [("product", pid, {**self.rows["product"][pid], "price": price})]

    async def rename_product(self, client, conn, rng, path) -> Changes | None:  # noqa: ANN001
        pid = self._pick(rng, "product")
        if pid is None:
            return None
        name = self._label("product")
        if path == "mutation":
            await _mutate(client, UPDATE_PRODUCT, {"id": pid, "name": name})
        else:
            await conn.execute("UPDATE products SET name = $2 WHERE id = $1", int(pid), name)
        return [("product", pid, {**self.rows["product"][pid], "name": name})]

    async def create_product(self, client, conn, rng, path) -> Changes | None:  # noqa: ANN001
        name, price = self._label("product"), self._price(rng)
        categories = sorted(rng.sample(self.all_categories, rng.randrange(1, 4)), key=int)
        if path == "mutation":
            data = await _mutate(client, CREATE_PRODUCT, {"name": name, "price": f"{price / 100:.2f}",
                                                          "categoryIds": categories})
            pid, created = str(data["id"]), data["createdAt"]
        else:
            async with conn.transaction():
                row = await conn.fetchrow("INSERT INTO products (name, price) VALUES ($1, $2)"
                                          " RETURNING id, fraiseshm.iso8601(created_at) AS c", name, Decimal(price) / 100)
                await conn.execute("INSERT INTO product_categories SELECT $1, unnest($2::int[])",
                                   row["id"], [int(k) for k in categories])
            pid, created = str(row["id"]), row["c"]
        self.all_products.append(pid)
        return ([("product", pid, {"id": pid, "name": name, "price": price, "createdAt": created})]
                + [("link", f"{pid}:{k}", {"product": pid, "category": k}) for k in categories])

    async def set_categories(self, client, conn, rng, path) -> Changes | None:  # noqa: ANN001
        pid = self._pick(rng, "product")
        if pid is None:
            return None
        old = {im["category"] for im in self.rows["link"].values() if im["product"] == pid}
        new = set(rng.sample(self.all_categories, rng.randrange(0, 4)))
        if path == "mutation":
            await _mutate(client, SET_CATEGORIES, {"productId": pid, "categoryIds": sorted(new, key=int)})
        else:
            async with conn.transaction():
                await conn.execute("DELETE FROM product_categories WHERE product_id = $1 AND category_id <> ALL ($2::int[])",
                                   int(pid), [int(k) for k in new])
                await conn.execute("INSERT INTO product_categories SELECT $1, unnest($2::int[]) ON CONFLICT DO NOTHING",
                                   int(pid), [int(k) for k in new - old])
        return ([("link", f"{pid}:{k}", None) for k in old - new]
                + [("link", f"{pid}:{k}", {"product": pid, "category": k}) for k in new - old])

    async def rename_category(self, client, conn, rng, path) -> Changes | None:  # noqa: ANN001
        kid = self._pick(rng, "category")
        if kid is None:
            return None
        name = self._label("category")
        await conn.execute("UPDATE categories SET name = $2 WHERE id = $1", int(kid), name)
        return [("category", kid, {**self.rows["category"][kid], "name": name})]

    # --- orders and items --------------------------------------------------------

    def _order_items(self, order: str, data: dict[str, Any]) -> Changes:
        """Items of an order response that this writer did not know yet."""
        return [("item", str(i["id"]), {"id": int(i["id"]), "order": order, "product": str(i["product"]["id"]),
                                        "quantity": i["quantity"]})
                for i in data["items"] if str(i["id"]) not in self.rows["item"]]

    async def create_order(self, client, conn, rng, path) -> Changes | None:  # noqa: ANN001
        cid = self._pick(rng, "customer")
        if cid is None:
            return None
        lines = [(rng.choice(self.all_products), rng.randrange(1, 5)) for _ in range(rng.randrange(1, 4))]
        if path == "mutation":
            data = await _mutate(client, CREATE_ORDER, {
                "customerId": cid, "items": [{"productId": p, "quantity": q} for p, q in lines]})
            oid = str(data["id"])
            order = {"id": oid, "status": "open", "createdAt": data["createdAt"], "customer": cid}
            return [("order", oid, order)] + self._order_items(oid, data)
        async with conn.transaction():
            row = await conn.fetchrow("INSERT INTO orders (customer_id) VALUES ($1)"
                                      " RETURNING id, status, fraiseshm.iso8601(created_at) AS c", int(cid))
            items = await conn.fetch("INSERT INTO order_items (order_id, product_id, quantity)"
                                     " SELECT $1, p, q FROM unnest($2::int[], $3::int[]) AS t(p, q) RETURNING id, product_id, quantity",
                                     row["id"], [int(p) for p, _ in lines], [q for _, q in lines])
        oid = str(row["id"])
        return [("order", oid, {"id": oid, "status": row["status"], "createdAt": row["c"], "customer": cid})] + [
            ("item", str(i["id"]), {"id": i["id"], "order": oid, "product": str(i["product_id"]), "quantity": i["quantity"]})
            for i in items]

    async def delete_order(self, client, conn, rng, path) -> Changes | None:  # noqa: ANN001
        if len(self.rows["order"]) < 24:
            return await self.create_order(client, conn, rng, path)
        oid = self._pick(rng, "order")
        assert oid is not None
        items = [i for i, im in self.rows["item"].items() if im["order"] == oid]
        if path == "mutation":
            await _mutate(client, DELETE_ORDER, {"id": oid})
        else:
            await conn.execute("DELETE FROM orders WHERE id = $1", int(oid))
        return [("order", oid, None)] + [("item", i, None) for i in items]

    async def set_status(self, client, conn, rng, path) -> Changes | None:  # noqa: ANN001
        oid = self._pick(rng, "order")
        if oid is None:
            return None
        status = rng.choice(sorted({"open", "paid", "shipped"} - {self.rows["order"][oid]["status"]}))
        await conn.execute("UPDATE orders SET status = $2 WHERE id = $1", int(oid), status)
        return [("order", oid, {**self.rows["order"][oid], "status": status})]

    async def add_item(self, client, conn, rng, path) -> Changes | None:  # noqa: ANN001
        oid = self._pick(rng, "order")
        if oid is None:
            return None
        pid, quantity = rng.choice(self.all_products), rng.randrange(1, 5)
        if path == "mutation":
            data = await _mutate(client, ADD_ITEM, {"orderId": oid, "productId": pid, "quantity": quantity})
            new = self._order_items(oid, data)
            assert len(new) == 1, new
            return new
        iid = await conn.fetchval("INSERT INTO order_items (order_id, product_id, quantity) VALUES ($1, $2, $3)"
                                  " RETURNING id", int(oid), int(pid), quantity)
        return [("item", str(iid), {"id": iid, "order": oid, "product": pid, "quantity": quantity})]

    async def change_quantity(self, client, conn, rng, path) -> Changes | None:  # noqa: ANN001
        iid = self._pick(rng, "item")
        if iid is None:
            return None
        quantity = self.rows["item"][iid]["quantity"] % 9 + 1
        await conn.execute("UPDATE order_items SET quantity = $2 WHERE id = $1", int(iid), quantity)
        return [("item", iid, {**self.rows["item"][iid], "quantity": quantity})]

    async def delete_item(self, client, conn, rng, path) -> Changes | None:  # noqa: ANN001
        iid = self._pick(rng, "item")
        if iid is None or sum(im["order"] == self.rows["item"][iid]["order"] for im in self.rows["item"].values()) < 2:
            return None
        await conn.execute("DELETE FROM order_items WHERE id = $1", int(iid))
        return [("item", iid, None)]


def _order_total(order: str, items: list[str]) -> Any:
    """compute() for Order.total: cents of sum(quantity * price) over the order's items."""

    def compute(images: dict[tuple[str, str], Image]) -> int:
        total = 0
        for key in items:
            item = images[("item", key)]
            if item is None or item["order"] != order:
                continue
            product = images.get(("product", item["product"]))
            if product is None:
                return -1  # an item whose product is not among the inputs: no such state
            total += item["quantity"] * product["price"]
        return total

    return compute


class Shop(Workload):
    name = "shop"

    def __init__(self) -> None:
        self.history: History | None = None

    async def load(self, history: History, dsn: str) -> None:
        self.history = history
        history.indexed = {"order": ("customer",), "item": ("order",), "link": ("category", "product")}
        conn = await asyncpg.connect(dsn)
        try:
            for r in await conn.fetch("SELECT id, name, email, fraiseshm.iso8601(created_at) AS c FROM customers"):
                k = str(r["id"])
                history.seed("customer", k, {"id": k, "name": r["name"], "email": r["email"], "createdAt": r["c"]})
            for r in await conn.fetch("SELECT id, name, price, fraiseshm.iso8601(created_at) AS c FROM products"):
                k = str(r["id"])
                history.seed("product", k, {"id": k, "name": r["name"], "price": cents(r["price"]), "createdAt": r["c"]})
            for r in await conn.fetch("SELECT id, name FROM categories"):
                history.seed("category", str(r["id"]), {"id": str(r["id"]), "name": r["name"]})
            for r in await conn.fetch("SELECT product_id, category_id FROM product_categories"):
                p, k = str(r["product_id"]), str(r["category_id"])
                history.seed("link", f"{p}:{k}", {"product": p, "category": k})
            for r in await conn.fetch("SELECT id, customer_id, status, fraiseshm.iso8601(created_at) AS c FROM orders"):
                k = str(r["id"])
                history.seed("order", k, {"id": k, "status": r["status"], "createdAt": r["c"],
                                          "customer": str(r["customer_id"])})
            for r in await conn.fetch("SELECT id, order_id, product_id, quantity FROM order_items"):
                history.seed("item", str(r["id"]), {"id": r["id"], "order": str(r["order_id"]),
                                                    "product": str(r["product_id"]), "quantity": r["quantity"]})
        finally:
            await conn.close()

    def writers(self, n: int, mutations: bool, sql: bool) -> list[ShopWriter]:
        assert self.history is not None
        h = self.history

        def seeded(kind: str) -> dict[str, dict[str, Any]]:
            return {key: vs[0].image for (k, key), vs in h.versions.items() if k == kind and vs[0].image is not None}

        categories = sorted(seeded("category"), key=int)
        writers = [ShopWriter(i, mutations, sql, categories) for i in range(n)]
        products = sorted(seeded("product"), key=int)
        for w in writers:
            w.all_products = products  # shared list: a product one writer creates, others may order
        customer_owner = {}
        for i, (key, im) in enumerate(sorted(seeded("customer").items(), key=lambda kv: int(kv[0]))):
            writers[i % n].rows["customer"][key] = im
            customer_owner[key] = writers[i % n]
        product_owner = {}
        for i, key in enumerate(products):
            writers[i % n].rows["product"][key] = seeded("product")[key]
            product_owner[key] = writers[i % n]
        for i, key in enumerate(categories):
            writers[i % n].rows["category"][key] = seeded("category")[key]
        for key, im in seeded("link").items():
            product_owner[im["product"]].rows["link"][key] = im
        order_owner = {}
        for key, im in seeded("order").items():
            customer_owner[im["customer"]].rows["order"][key] = im
            order_owner[key] = customer_owner[im["customer"]]
        for key, im in seeded("item").items():
            order_owner[im["order"]].rows["item"][key] = im
        return writers

    # --- reads -------------------------------------------------------------------

    def next_read(self, rng: random.Random) -> tuple[str, str, dict[str, Any]]:
        assert self.history is not None
        keys = self.history.keys

        def pick(kind: str) -> str:
            # a third of the picks among the rows created last: their lists are empty or short and
            # change membership without touching any row the cached entry holds (list-membership tags)
            recent = self.history.recent[kind][-8:] if self.history else []
            if recent and rng.random() < 0.33:
                return rng.choice(recent)
            ordered = sorted(keys[kind], key=int)
            return ordered[int(len(ordered) * rng.random() ** 2)]

        shape = rng.choices(["customer", "order", "order_total", "orders_of", "category", "product",
                             "recent_of", "recent", "customers_page", "products_page", "orders_page"],
                            [2, 3, 3, 2, 2, 2, 1, 1, 1, 1, 1])[0]
        if shape == "products_page":
            return shape, PRODUCTS_PAGE, {"o": rng.randrange(0, len(keys["product"]), 5)}
        if shape == "orders_page":
            return shape, ORDERS_PAGE, {"o": rng.randrange(0, len(keys["order"]) // 2, 6)}
        if shape == "recent_of":
            return shape, RECENT_OF, {"c": pick("customer")}
        if shape == "recent":
            return shape, RECENT, {"id": pick("order")}
        if shape == "customers_page":
            return shape, CUSTOMERS_PAGE, {"o": rng.randrange(0, len(keys["customer"]), 5)}
        if shape == "customer":
            return shape, CUSTOMER, {"id": pick("customer")}
        if shape == "order":
            return shape, ORDER, {"id": pick("order")}
        if shape == "order_total":
            return shape, ORDER_TOTAL, {"id": pick("order")}
        if shape == "orders_of":
            return shape, ORDERS_OF, {"c": pick("customer")}
        if shape == "category":
            return shape, CATEGORY, {"id": pick("category")}
        return shape, PRODUCT, {"id": pick("product")}

    def _total(self, order: str, served: Any) -> Total:
        assert self.history is not None
        h = self.history
        items = sorted(h.index.get(("item", "order", order), set()))
        products = sorted({im["product"] for i in items for v in h.versions[("item", i)] if (im := v.image)})
        inputs = [("item", i) for i in items] + [("product", p) for p in products]
        return Total(f"order {order} total", inputs, _order_total(order, items), cents(served))

    def _count(self, name: str, kind: str, field: str, value: str, served: int) -> Total:
        assert self.history is not None
        keys = sorted(self.history.index.get((kind, field, value), set()))

        def compute(images: dict[tuple[str, str], Image]) -> int:
            return sum(1 for k in keys if (im := images[(kind, k)]) is not None and im[field] == value)

        return Total(name, [(kind, k) for k in keys], compute, served)

    def facts(self, read: Read) -> list[Fact]:
        d, p = read.body, read.params
        facts: list[Fact] = []

        def product(x: dict[str, Any]) -> None:
            fields = {k: v for k, v in x.items() if k not in ("categories", "price")}
            fields["id"] = str(x["id"])
            if "price" in x:
                fields["price"] = cents(x["price"])
            facts.append(Obj("product", str(x["id"]), fields))

        if read.shape == "customer":
            x = d["customer"]
            if x is None:
                facts.append(Obj("customer", p["id"], None))
            else:
                facts.append(Obj("customer", p["id"], {k: v for k, v in x.items() if k not in ("orderCount", "id")}))
                facts.append(self._count(f"customer {p['id']} orderCount", "order", "customer", p["id"], x["orderCount"]))
        elif read.shape in ("order", "order_total"):
            x = d["order"]
            if x is None:
                facts.append(Obj("order", p["id"], None))
                return facts
            facts.append(self._total(p["id"], x["total"]))
            if read.shape == "order_total":
                facts.append(Obj("order", p["id"], {}))  # exists
                return facts
            customer = x["customer"]
            facts.append(Obj("order", p["id"], {"status": x["status"], "createdAt": x["createdAt"],
                                                "customer": str(customer["id"])}))
            facts.append(Obj("customer", str(customer["id"]), {"name": customer["name"], "email": customer["email"]}))
            served = []
            for item in x["items"]:
                iid, pid = str(item["id"]), str(item["product"]["id"])
                served.append((iid, {"quantity": item["quantity"], "product": pid}))
                product(item["product"])
                facts.append(Total(f"item {iid} lineTotal", [("item", iid), ("product", pid)],
                                   lambda ims, i=iid, q=pid: (ims[("item", i)]["quantity"] * ims[("product", q)]["price"]
                                                              if ims[("item", i)] and ims[("product", q)] else -1),
                                   cents(item["lineTotal"])))
            facts.append(Members("item", "order", p["id"], served, order="id"))
        elif read.shape == "recent":
            x = d["recentOrder"]
            if x is None:
                facts.append(Obj("order", p["id"], None))
                return facts
            facts.append(self._total(p["id"], x["total"]))
            facts.append(Obj("order", p["id"], {"status": x["status"]}))
            served = []
            for item in x["items"]:
                iid, pid = str(item["id"]), str(item["product"]["id"])
                served.append((iid, {"quantity": item["quantity"], "product": pid}))
                product(item["product"])
            facts.append(Members("item", "order", p["id"], served, order="id"))
        elif read.shape == "recent_of":
            served = []
            for x in d["recentOrders"]:
                oid = str(x["id"])
                served.append((oid, {"createdAt": x["createdAt"], "customer": str(x["customer"]["id"])}))
                facts.append(Obj("customer", str(x["customer"]["id"]), {"name": x["customer"]["name"]}))
                facts.append(self._total(oid, x["total"]))
            facts.append(Members("order", "customer", p["c"], served, descending=True))
        elif read.shape == "customers_page":
            served = []
            for x in d["customers"]:
                cid = str(x["id"])
                served.append((cid, {"name": x["name"], "createdAt": x["createdAt"]}))
                facts.append(self._count(f"customer {cid} orderCount", "order", "customer", cid, x["orderCount"]))
            facts.append(Window("customer", p["o"], 5, served))
        elif read.shape == "products_page":
            served = []
            for x in d["products"]:
                product(x)
                served.append((str(x["id"]), {}))
            facts.append(Window("product", p["o"], 5, served))
        elif read.shape == "orders_page":
            served = []
            for x in d["orders"]:
                oid = str(x["id"])
                served.append((oid, {"createdAt": x["createdAt"], "customer": str(x["customer"]["id"])}))
                facts.append(self._total(oid, x["total"]))
            facts.append(Window("order", p["o"], 6, served))
        elif read.shape == "orders_of":
            served = []
            for x in d["orders"]:
                oid = str(x["id"])
                served.append((oid, {"status": x["status"], "createdAt": x["createdAt"]}))
                facts.append(self._total(oid, x["total"]))
            facts.append(Members("order", "customer", p["c"], served))
        elif read.shape == "category":
            x = d["category"]
            if x is None:
                facts.append(Obj("category", p["id"], None))
                return facts
            facts.append(Obj("category", p["id"], {"name": x["name"]}))
            facts.append(self._count(f"category {p['id']} productCount", "link", "category", p["id"], x["productCount"]))
            served = []
            for y in x["products"]:
                product(y)
                served.append((f"{y['id']}:{p['id']}", {}))
            facts.append(Members("link", "category", p["id"], served, order=None))
            names = [(y["name"], int(y["id"])) for y in x["products"]]
            if names != sorted(names):
                facts.append(Total(f"category {p['id']} products order", [], lambda _ims: False, True))
        elif read.shape == "product":
            x = d["product"]
            if x is None:
                facts.append(Obj("product", p["id"], None))
                return facts
            product(x)
            served = []
            for k in x["categories"]:
                facts.append(Obj("category", str(k["id"]), {"name": k["name"]}))
                served.append((f"{p['id']}:{k['id']}", {}))
            facts.append(Members("link", "product", p["id"], served, order=None))
        return facts
