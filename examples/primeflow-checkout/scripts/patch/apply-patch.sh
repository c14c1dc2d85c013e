#!/bin/bash
# PrimeFlow — aplica um patch criado por create-patch.sh
# Uso: ./scripts/patch/apply-patch.sh 3.0.0

VERSION=$1
PROJECT_DIR="$(cd "$(dirname "$0")/../.." && pwd)"
PATCH_DIR="$PROJECT_DIR/patches/v$VERSION"
BACKUP_DIR="$PROJECT_DIR/backups/pre-patch-v${VERSION}_$(date +%Y%m%d_%H%M%S)"
COMPOSE="docker compose -f $PROJECT_DIR/docker/docker-compose.yml"

RED='\033[0;31m'
GREEN='\033[0;32m'
YELLOW='\033[1;33m'
NC='\033[0m'

if [ -z "$VERSION" ]; then
    echo -e "${RED}Erro: informe a versão${NC}"
    exit 1
fi

if [ ! -d "$PATCH_DIR" ]; then
    echo -e "${RED}Patch v$VERSION não encontrado em $PATCH_DIR${NC}"
    exit 1
fi

cd "$PROJECT_DIR"
CURRENT=$(cat VERSION)

echo -e "${YELLOW}Versão atual: $CURRENT -> nova versão: $VERSION${NC}"
read -p "Deseja continuar? (s/N) " CONFIRM
if [ "$CONFIRM" != "s" ] && [ "$CONFIRM" != "S" ]; then
    echo "Cancelado."
    exit 0
fi

# 1. Checksum
if [ -f "$PATCH_DIR/checksum.md5" ]; then
    (cd "$PATCH_DIR" && md5sum -c checksum.md5) || { echo -e "${RED}Checksum inválido!${NC}"; exit 1; }
else
    echo -e "${YELLOW}Aviso: checksum.md5 não encontrado, continuando mesmo assim${NC}"
fi

# 2. Backup
echo "Criando backup em $BACKUP_DIR..."
mkdir -p "$BACKUP_DIR"
tar -czf "$BACKUP_DIR/files.tar.gz" --exclude=node_modules --exclude=backups --exclude=patches .
cp VERSION "$BACKUP_DIR/VERSION"

echo "Backup do banco..."
$COMPOSE exec -T postgres pg_dump -U primeflow primeflow > "$BACKUP_DIR/database.sql" \
    || echo -e "${YELLOW}Aviso: falha no backup do banco${NC}"

# 3. Para os serviços
$COMPOSE stop api worker frontend

# 4. Extrai os arquivos
echo "Extraindo patch..."
tar -xzf "$PATCH_DIR/patch-v$VERSION.tar.gz" -C "$PROJECT_DIR"

# 5. Migrações
echo "Rodando migrações..."
for f in prisma/migrations/*.sql; do
    $COMPOSE exec -T postgres psql -U primeflow -d primeflow < "$f"
done

# 6. Build e restart
$COMPOSE up -d --build api worker frontend

echo "Aguardando a API subir..."
sleep 15

# 7. Health check
if curl -s http://localhost:4000/health > /dev/null; then
    echo -e "${GREEN}Patch v$VERSION aplicado com sucesso!${NC}"
else
    echo -e "${RED}Health check falhou!${NC}"
    echo "Execute: make rollback-patch VERSION=$VERSION"
    exit 1
fi
