/* Folder-private declarations of src/store. */
#ifndef GW_STORE_INT_H
#define GW_STORE_INT_H

#include <stddef.h>

#include "store/store.h"

/* Migrations embedded from sql/NNN_name.sql at build time (gen/migrations.c),
 * in version order. */
struct store_migration {
    int version;
    const char *name;
    const char *sql;
};
extern const struct store_migration store_migrations[];
extern const size_t store_migrations_count;

#endif /* GW_STORE_INT_H */
